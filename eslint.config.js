import js from "@eslint/js";
import tseslint from "typescript-eslint";

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", "**/*.d.ts"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/no-unused-vars": ["error", { argsIgnorePattern: "^_", varsIgnorePattern: "^_" }],
      eqeqeq: ["error", "smart"],
    },
  },
  {
    // The dashboard runs in a browser, as plain JS with no build step.
    files: ["src/web/static/**/*.js"],
    languageOptions: {
      sourceType: "module",
      globals: Object.fromEntries(
        [
          "Blob",
          "DecompressionStream",
          "ImageData",
          "Response",
          "TextDecoder",
          "URLSearchParams",
          "WebSocket",
          "document",
          "fetch",
          "getComputedStyle",
          "location",
          "setTimeout",
        ].map((name) => [name, "readonly"]),
      ),
    },
  },
);
