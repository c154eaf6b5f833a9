/*
 * The native half of hostkvm's run loop (see hostkvm/_native/__init__.py).
 *
 * hk_run_mmio() issues KVM_RUN on a vCPU until an exit that is not KVM_EXIT_MMIO, an
 * error, or until `max` MMIO exits are recorded. Each MMIO exit is recorded with the
 * monotonic time around its KVM_RUN, kvm_run.mmio, and RIP/RCX from kvm_run.s.regs
 * (KVM_CAP_SYNC_REGS must be enabled with KVM_SYNC_X86_REGS). An MMIO read is completed
 * with the first `len` bytes of `read_data` before the next KVM_RUN. Everything else
 * (ucalls, terminal exits, timeouts) is left to the Python caller, which decodes kvm_run.
 *
 * Returns the number of records written. *last = {t0, t1} of the KVM_RUN that ended the
 * call (zeros when it ended because `max` records were filled); *err = errno of a failed
 * KVM_RUN (EINTR for a kick), else 0.
 */
#include <errno.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

struct hk_rec {
	uint64_t t0, t1;
	uint64_t gpa;
	uint8_t data[8];
	uint64_t rip, rcx;
	uint32_t len;
	uint32_t is_write;
};

_Static_assert(sizeof(struct hk_rec) == 56, "hk_rec layout is shared with Python");

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

long hk_run_mmio(int fd, struct kvm_run *run, const uint8_t *read_data,
		 struct hk_rec *recs, long max, uint64_t *last, int *err)
{
	long n = 0;

	*err = 0;
	last[0] = last[1] = 0;
	while (n < max) {
		uint64_t t0 = now_ns();
		int r = ioctl(fd, KVM_RUN, 0);
		uint64_t t1 = now_ns();

		if (r < 0) {
			*err = errno;
			last[0] = t0;
			last[1] = t1;
			return n;
		}
		if (run->exit_reason != KVM_EXIT_MMIO) {
			last[0] = t0;
			last[1] = t1;
			return n;
		}
		struct hk_rec *rec = &recs[n++];
		uint32_t len = run->mmio.len > 8 ? 8 : run->mmio.len;

		rec->t0 = t0;
		rec->t1 = t1;
		rec->gpa = run->mmio.phys_addr;
		rec->len = len;
		rec->is_write = run->mmio.is_write;
		rec->rip = run->s.regs.regs.rip;
		rec->rcx = run->s.regs.regs.rcx;
		if (run->mmio.is_write) {
			memcpy(rec->data, run->mmio.data, 8);
		} else {
			memcpy(run->mmio.data, read_data, len);
			memcpy(rec->data, read_data, 8);
		}
	}
	return n;
}
