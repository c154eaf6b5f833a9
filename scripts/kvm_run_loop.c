/*
 * kvm_run_loop: the C reference side of `hostkvm bench`.
 *
 * Loads a guest image written by hostkvm (memslots with their contents, kvm_regs,
 * kvm_sregs, the ucall port and the value MMIO reads return), runs it with a minimal
 * KVM_RUN loop until the guest's first ucall, and prints one line:
 *     exits=<MMIO exits> loop_ns=<ns spent in the KVM_RUN loop> total_ns=<ns since start>
 *
 * Image format (little endian):
 *   "HKVMIMG1"
 *   u32 nslots; per slot: u32 slot, u32 flags, u64 gpa, u64 size, u64 len, len bytes
 *   struct kvm_regs, struct kvm_sregs
 *   u16 ucall_port, u16 read_len, u8 read_value[8]
 *
 * Build: gcc -O2 -Wall -o kvm_run_loop kvm_run_loop.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define die(...) do { fprintf(stderr, "kvm_run_loop: " __VA_ARGS__); fputc('\n', stderr); exit(2); } while (0)

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void rd(FILE *f, void *p, size_t n, const char *what)
{
	if (fread(p, 1, n, f) != n)
		die("image truncated reading %s", what);
}

int main(int argc, char **argv)
{
	uint64_t t0 = now_ns();
	if (argc != 2)
		die("usage: kvm_run_loop IMAGE");
	FILE *f = fopen(argv[1], "rb");
	if (!f)
		die("%s: %s", argv[1], strerror(errno));
	char magic[8];
	rd(f, magic, 8, "magic");
	if (memcmp(magic, "HKVMIMG1", 8))
		die("%s: not a hostkvm image", argv[1]);

	int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (kvm < 0)
		die("/dev/kvm: %s", strerror(errno));
	int vm = ioctl(kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		die("KVM_CREATE_VM: %s", strerror(errno));

	uint32_t nslots;
	rd(f, &nslots, 4, "nslots");
	for (uint32_t i = 0; i < nslots; i++) {
		struct { uint32_t slot, flags; uint64_t gpa, size, len; } __attribute__((packed)) s;
		rd(f, &s, sizeof(s), "slot");
		void *mem = mmap(NULL, s.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (mem == MAP_FAILED)
			die("mmap %llu bytes: %s", (unsigned long long)s.size, strerror(errno));
		if (s.len > s.size)
			die("slot %u: contents larger than the slot", s.slot);
		rd(f, mem, s.len, "slot contents");
		struct kvm_userspace_memory_region r = {
			.slot = s.slot, .flags = s.flags, .guest_phys_addr = s.gpa,
			.memory_size = s.size, .userspace_addr = (uint64_t)(uintptr_t)mem,
		};
		if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0)
			die("KVM_SET_USER_MEMORY_REGION slot %u: %s", s.slot, strerror(errno));
	}
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	uint16_t ucall_port, read_len;
	uint8_t read_value[8];
	rd(f, &regs, sizeof(regs), "kvm_regs");
	rd(f, &sregs, sizeof(sregs), "kvm_sregs");
	rd(f, &ucall_port, 2, "ucall port");
	rd(f, &read_len, 2, "read length");
	rd(f, read_value, 8, "read value");
	fclose(f);

	int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
	if (vcpu < 0)
		die("KVM_CREATE_VCPU: %s", strerror(errno));
	int mmap_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
	struct kvm_run *run = mmap(NULL, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED)
		die("mmap kvm_run: %s", strerror(errno));
	if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
		die("KVM_SET_SREGS: %s", strerror(errno));
	if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
		die("KVM_SET_REGS: %s", strerror(errno));

	uint64_t exits = 0, t1 = now_ns();
	for (;;) {
		if (ioctl(vcpu, KVM_RUN, 0) < 0)
			die("KVM_RUN: %s", strerror(errno));
		if (run->exit_reason == KVM_EXIT_MMIO) {
			exits++;
			if (!run->mmio.is_write)
				memcpy(run->mmio.data, read_value, run->mmio.len < 8 ? run->mmio.len : 8);
			continue;
		}
		if (run->exit_reason == KVM_EXIT_IO && run->io.port == ucall_port)
			break;
		die("unexpected exit reason %u after %llu MMIO exits", run->exit_reason,
		    (unsigned long long)exits);
	}
	uint64_t t2 = now_ns();
	munmap(run, mmap_size);
	close(vcpu);
	close(vm);
	close(kvm);
	printf("exits=%llu loop_ns=%llu total_ns=%llu\n", (unsigned long long)exits,
	       (unsigned long long)(t2 - t1), (unsigned long long)(now_ns() - t0));
	(void)read_len;
	return 0;
}
