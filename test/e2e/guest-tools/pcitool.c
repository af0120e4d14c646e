/*
 * pcitool: what the end-to-end guest needs beyond busybox, as a static binary.
 *   pcitool cfgr DEV OFF WIDTH          config read through /sys (prints hex)
 *   pcitool cfgw DEV OFF WIDTH VALUE    config write through /sys
 *   pcitool barr FILE OFF               32-bit read through an mmap of a /sys resource file
 *   pcitool barw FILE OFF VALUE         32-bit write the same way
 *   pcitool vfio GROUP BDF NVEC         with the device bound to vfio-pci (vIOMMU):
 *       enable NVEC MSI-X vectors, map a buffer for DMA, ring the sample
 *       device's doorbell, wait for MSI-X vector 0, check the pattern.
 * Output is KEY=value lines for the test to read.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

static void die(const char *what) {
  printf("ERROR=%s: %s\n", what, strerror(errno));
  exit(1);
}

static uint64_t num(const char *s) { return strtoull(s, NULL, 0); }

static int cfg(int write, const char *dev, off_t off, int width, uint32_t value) {
  char path[512];
  snprintf(path, sizeof path, "%s/config", dev);
  int fd = open(path, write ? O_RDWR : O_RDONLY);
  if (fd < 0) die("open config");
  uint32_t v = value;
  ssize_t n = write ? pwrite(fd, &v, width, off) : pread(fd, &v, width, off);
  if (n != width) die("config access");
  close(fd);
  if (!write) printf("0x%x\n", width == 1 ? (v & 0xff) : width == 2 ? (v & 0xffff) : v);
  return 0;
}

static int bar(int write, const char *file, off_t off, uint32_t value) {
  int fd = open(file, O_RDWR | O_SYNC);
  if (fd < 0) die("open resource");
  volatile uint32_t *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) die("mmap resource");
  if (write)
    p[off / 4] = value;
  else
    printf("0x%x\n", p[off / 4]);
  munmap((void *)p, 4096);
  close(fd);
  return 0;
}

/* The sample device's BAR0 registers (src/samples/sample-device.ts). */
enum { ID = 0x00, SCRATCH = 0x04, DOORBELL = 0x08, DMA_LO = 0x10, DMA_HI = 0x14, DMA_LEN = 0x18, SEED = 0x1c, STATUS = 0x20, ERRREG = 0x28 };

static int vfio(const char *group_path, const char *bdf, int nvec) {
  int container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) die("open /dev/vfio/vfio");
  int group = open(group_path, O_RDWR);
  if (group < 0) die("open group");
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) die("SET_CONTAINER");
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("SET_IOMMU");
  int device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  if (device < 0) die("GET_DEVICE_FD");

  struct vfio_region_info bar0 = {.argsz = sizeof bar0, .index = VFIO_PCI_BAR0_REGION_INDEX};
  struct vfio_region_info config = {.argsz = sizeof config, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &bar0) || ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &config))
    die("GET_REGION_INFO");
  uint16_t command;
  if (pread(device, &command, 2, config.offset + 4) != 2) die("read command");
  command |= 0x6; /* memory decode, bus master */
  if (pwrite(device, &command, 2, config.offset + 4) != 2) die("write command");
#define REG_WRITE(reg, v)                                                              \
  do {                                                                                 \
    uint32_t val_ = (v);                                                               \
    if (pwrite(device, &val_, 4, bar0.offset + (reg)) != 4) die("BAR0 write " #reg);   \
  } while (0)
#define REG_READ(reg, out) \
  if (pread(device, &(out), 4, bar0.offset + (reg)) != 4) die("BAR0 read " #reg)

  uint32_t id;
  REG_READ(ID, id);
  printf("VFIO_ID=0x%x\n", id);

  /* MSI-X: one eventfd per vector; the kernel allocates the vectors. */
  size_t size = sizeof(struct vfio_irq_set) + sizeof(int) * nvec;
  struct vfio_irq_set *set = calloc(1, size);
  int *fds = (int *)set->data;
  set->argsz = size;
  set->flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
  set->index = VFIO_PCI_MSIX_IRQ_INDEX;
  set->start = 0;
  set->count = nvec;
  for (int i = 0; i < nvec; i++) fds[i] = eventfd(0, EFD_NONBLOCK);
  int efd0 = fds[0];
  if (ioctl(device, VFIO_DEVICE_SET_IRQS, set)) die("SET_IRQS MSI-X");
  printf("MSIX_ENABLED=%d\n", nvec);
  /* The guest kernel lists each vector it allocated in /proc/interrupts. */
  FILE *irqs = fopen("/proc/interrupts", "r");
  char line[512];
  int vectors = 0;
  while (irqs && fgets(line, sizeof line, irqs))
    if (strstr(line, "vfio-msix")) vectors++;
  if (irqs) fclose(irqs);
  printf("MSIX_VECTORS=%d\n", vectors);

  /* A buffer the device may write, at IOVA 0x200000. */
  size_t len = 8192;
  uint8_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) die("mmap buffer");
  memset(buf, 0, len);
  struct vfio_iommu_type1_dma_map map = {.argsz = sizeof map,
                                         .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                                         .vaddr = (uintptr_t)buf,
                                         .iova = 0x200000,
                                         .size = len};
  if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map)) die("MAP_DMA");

  uint32_t seed = 0x3c;
  REG_WRITE(DMA_LO, 0x200000 + 0x100);
  REG_WRITE(DMA_HI, 0);
  REG_WRITE(DMA_LEN, 5000);
  REG_WRITE(SEED, seed);
  REG_WRITE(DOORBELL, 1);

  struct pollfd pfd = {.fd = efd0, .events = POLLIN};
  int ready = poll(&pfd, 1, 20000);
  uint64_t count = 0;
  if (ready == 1 && read(efd0, &count, 8) == 8) printf("MSIX_IRQ=%llu\n", (unsigned long long)count);
  else printf("MSIX_IRQ=none\n");
  uint32_t status, err;
  REG_READ(STATUS, status);
  REG_READ(ERRREG, err);
  printf("DMA_STATUS=0x%x\nDMA_ERROR=%u\n", status, err);
  int good = 1;
  for (int i = 0; i < 5000; i++)
    if (buf[0x100 + i] != (uint8_t)(seed + i * 7)) good = 0;
  if (buf[0xff] != 0 || buf[0x100 + 5000] != 0) good = 0; /* nothing outside the range */
  printf("DMA=%s\n", good ? "ok" : "mismatch");
  printf("DMA_FIRST=0x%02x%02x%02x%02x\n", buf[0x100], buf[0x101], buf[0x102], buf[0x103]);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 5 && !strcmp(argv[1], "cfgr")) return cfg(0, argv[2], num(argv[3]), num(argv[4]), 0);
  if (argc >= 6 && !strcmp(argv[1], "cfgw")) return cfg(1, argv[2], num(argv[3]), num(argv[4]), num(argv[5]));
  if (argc >= 4 && !strcmp(argv[1], "barr")) return bar(0, argv[2], num(argv[3]), 0);
  if (argc >= 5 && !strcmp(argv[1], "barw")) return bar(1, argv[2], num(argv[3]), num(argv[4]));
  if (argc >= 5 && !strcmp(argv[1], "vfio")) return vfio(argv[2], argv[3], num(argv[4]));
  fprintf(stderr, "usage: see the comment at the top of pcitool.c\n");
  return 2;
}
