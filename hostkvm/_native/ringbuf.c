/*
 * The native half of hostkvm's trace decoder (see hostkvm/trace.py: decode_pages()).
 *
 * hk_rb_walk() walks ring-buffer pages as read from per_cpu/cpuN/trace_pipe_raw (struct
 * buffer_data_page: a u64 timestamp, the commit word, then events) and lists every data
 * event: its timestamp, its common_type, where its record starts in `buf`, how many bytes
 * the record has and the CPU of its page. Decoding the record's fields stays in Python.
 *
 * The walk follows kernel/trace/ring_buffer.c: a 5-bit type_len, a 27-bit time_delta;
 * type_len 1..28 is a data event of type_len words, 0 a data event whose length (in bytes,
 * counting the length word) follows the header, 29 padding (the null event when its delta
 * is 0), 30 a time extend, 31 an absolute time stamp (its low 59 bits).
 *
 * With NULL output arrays it only counts. It returns the number of events, or -1 for
 * anything it does not accept (lost events, a bad commit, a truncated event...): the
 * Python decoder then decodes the same pages and reports the problem. It never reads
 * outside the pages it is given.
 */
#include <stdint.h>
#include <string.h>

#define RB_MISSED_EVENTS (1u << 31)
#define RB_MISSED_STORED (1u << 30)
#define RINGBUF_TYPE_DATA_TYPE_LEN_MAX 28
#define RINGBUF_TYPE_PADDING 29
#define RINGBUF_TYPE_TIME_EXTEND 30
#define RINGBUF_TYPE_TIME_STAMP 31
#define TS_SHIFT 27

struct hk_rb_layout {
	uint32_t timestamp_offset;
	uint32_t commit_offset;
	uint32_t commit_size; /* 4 or 8 */
	uint32_t data_offset; /* a multiple of 4 */
};

static inline uint32_t word(const uint8_t *p, uint64_t i)
{
	uint32_t w;

	memcpy(&w, p + 4 * i, 4);
	return w;
}

long hk_rb_walk(const uint8_t *buf, const uint64_t *page_offset, const uint32_t *page_len,
		const uint32_t *page_cpu, long npages, const struct hk_rb_layout *l,
		uint64_t *ts_out, uint32_t *type_out, uint64_t *rec_out, uint32_t *len_out,
		uint32_t *cpu_out)
{
	long n = 0;

	if (l->data_offset % 4 || (l->commit_size != 4 && l->commit_size != 8) ||
	    l->timestamp_offset + 8 > l->data_offset || l->commit_offset + l->commit_size > l->data_offset)
		return -1;
	for (long p = 0; p < npages; p++) {
		const uint8_t *page = buf + page_offset[p];
		uint32_t len = page_len[p], commit, size;
		uint64_t ts, k, end;

		if (len < l->data_offset || len % 4)
			return -1;
		memcpy(&ts, page + l->timestamp_offset, 8);
		memcpy(&commit, page + l->commit_offset, 4); /* the low half of a u64 commit (little endian) */
		size = commit & (RB_MISSED_STORED - 1);
		if (commit & RB_MISSED_EVENTS)
			return -1;
		if ((uint64_t)l->data_offset + size > len)
			return -1;
		k = l->data_offset / 4;
		end = (l->data_offset + size) / 4;
		while (k < end) {
			uint32_t hdr = word(page, k), type_len = hdr & 31;
			uint64_t rec;

			if (type_len && type_len <= RINGBUF_TYPE_DATA_TYPE_LEN_MAX) {
				rec = k + 1;
				k = rec + type_len;
			} else if (type_len == 0) {
				uint32_t bytes;

				if (k + 1 >= end)
					return -1;
				bytes = word(page, k + 1);
				if (bytes < 4)
					return -1;
				rec = k + 2;
				k = rec + (bytes - 4 + 3) / 4;
			} else if (type_len == RINGBUF_TYPE_TIME_EXTEND) {
				if (k + 1 >= end)
					return -1;
				ts += ((uint64_t)word(page, k + 1) << TS_SHIFT) + (hdr >> 5);
				k += 2;
				continue;
			} else if (type_len == RINGBUF_TYPE_TIME_STAMP) {
				if (k + 1 >= end)
					return -1;
				ts = (((uint64_t)word(page, k + 1) << TS_SHIFT) + (hdr >> 5)) |
				     (ts & ~((1ull << 59) - 1));
				k += 2;
				continue;
			} else { /* RINGBUF_TYPE_PADDING */
				if ((hdr >> 5) == 0 || k + 1 >= end)
					break; /* the null event: nothing more on this page */
				k += 1 + ((uint64_t)word(page, k + 1) + 3) / 4; /* a discarded event */
				continue;
			}
			if (k > end || rec >= end)
				return -1;
			ts += hdr >> 5;
			if (ts_out) {
				ts_out[n] = ts;
				type_out[n] = word(page, rec) & 0xffff;
				rec_out[n] = page_offset[p] + 4 * rec;
				len_out[n] = (uint32_t)(4 * (k - rec));
				cpu_out[n] = page_cpu[p];
			}
			n++;
		}
	}
	return n;
}

/*
 * hk_cut_windows(): attribute n ascending event timestamps ts[] to m KVM_RUN windows given
 * as edges[] = {start0, end0, start1, end1, ...}. cut[2i] counts the events before window
 * i starts (Python's bisect_left(ts, start_i)), cut[2i + 1] the events up to its end
 * included (bisect_right(ts, end_i)): window i holds ts[cut[2i]:cut[2i + 1]]. One merge walk.
 *
 * Returns 0, or 1 if ts[] is not ascending, or 2 if the edges are not (a window ending
 * before it starts, or starting before the previous one ends): the caller says where.
 * Bad input never reads outside the arrays.
 */
int hk_cut_windows(const uint64_t *ts, long n, const uint64_t *edges, long m, uint64_t *cut)
{
	long j = 0, k = 0;

	for (long x = 1; x < n; x++)
		if (ts[x] < ts[x - 1])
			return 1;
	for (long x = 1; x < 2 * m; x++)
		if (edges[x] < edges[x - 1])
			return 2;
	/* Two cursors: where one window ends and the next starts at the same ns, an event at
	 * that ns belongs to both, as with bisect. */
	for (long i = 0; i < m; i++) {
		while (j < n && ts[j] < edges[2 * i])
			j++;
		cut[2 * i] = (uint64_t)j;
		if (k < j)
			k = j;
		while (k < n && ts[k] <= edges[2 * i + 1])
			k++;
		cut[2 * i + 1] = (uint64_t)k;
	}
	return 0;
}
