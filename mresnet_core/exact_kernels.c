/* The element-wise steps of the exact momentum update, in C for the CPU (exact_native.py).
 *
 * Each function computes, bit for bit, what its torch counterpart in exact.py computes
 * (_forward_step, _undo_position, _undo_velocity, for 31-bit buffer states in an int32):
 * the same integer operations modulo 2**64 and the same correctly rounded float64
 * operations in the same order. Why not torch.compile: inductor's CPU code for int64 is
 * slow without AVX-512 (it has no vector int64 <-> float64 conversion there), and every
 * compiled call pays guard and wrapper overhead; a C loop the compiler vectorises itself
 * is 3-10x faster (measured in tests/core/test_exact_native.py's benchmark note).
 *
 * The conversions are written so that the compiler can vectorise them on any ISA:
 *   int64 |a| < 2**51 -> float64: the bits of a + bits(1.5 * 2**52), as a float64,
 *     minus 1.5 * 2**52 (exact), and an integer-valued float64 back the same way;
 *   any int64 a -> float64: a = h 2**32 + l with 0 <= l < 2**32; h 2**32 and l are exact
 *     float64s, so fl(h 2**32 + l) is the correctly rounded value (what cvtsi2sd gives);
 *   floor division by n: exact in float64 (exact._divmod_near).
 * Build with -ffp-contract=off (a fused multiply-add would round differently) and never
 * with -ffast-math. Compiled once per float type: -DEXACT_FLOAT=float or double.
 */
#include <stdint.h>
#include <string.h>

#ifndef EXACT_FLOAT
#define EXACT_FLOAT float
#endif
typedef EXACT_FLOAT T;
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#ifdef EXACT_F64
#define NAME(fn) CAT(fn, _f64)
#else
#define NAME(fn) CAT(fn, _f32)
#endif

typedef int64_t i64;
typedef uint64_t u64;
typedef int32_t i32;
typedef uint32_t u32;

#define MAGIC 6755399441055744.0 /* 1.5 * 2**52 */
#define MAGIC_BITS 0x4338000000000000ULL
#define TWO52 4503599627370496.0 /* 2**52 */
#define TWO52_BITS 0x4330000000000000ULL
#define TWO32 4294967296.0
#define INV_TWO32 (1.0 / 4294967296.0)
#define INV_SCALE 9.094947017729282e-13 /* 2**-40: exact.INV_SCALE */
#define BLOCK 4096                       /* elements per parallel work item */

/* below PARALLEL_MIN elements a parallel region costs more than it saves */
#define PARALLEL_MIN 16384
#ifdef _OPENMP
#define PARALLEL_FOR \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN)")
#define PARALLEL_FOR_MAX_PEAK                                                                \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN) \
             reduction(max : peak, smax)")
#define PARALLEL_FOR_MIN_STATE                                                               \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN) \
             reduction(min : smin)")
#else
#define PARALLEL_FOR
#define PARALLEL_FOR_MAX_PEAK
#define PARALLEL_FOR_MIN_STATE
#endif

static inline double as_f64(u64 b) { double d; memcpy(&d, &b, 8); return d; }
static inline u64 bits_f64(double d) { u64 b; memcpy(&b, &d, 8); return b; }

/* int64 |a| < 2**51 -> float64, exactly */
static inline double small_to_f64(i64 a) { return as_f64((u64)a + MAGIC_BITS) - MAGIC; }
/* integer-valued float64 |d| < 2**51 -> int64 */
static inline i64 small_to_i64(double d) { return (i64)(bits_f64(d + MAGIC) - MAGIC_BITS); }

/* any int64 -> float64, correctly rounded: with h the high 32 bits of a (signed) and l
 * the low 32 (unsigned), the float64 with bits (h + 2**31) | bits(2**84) is exactly
 * 2**84 + (h + 2**31) 2**32, minus 2**84 + 2**63 + 2**52 gives h 2**32 - 2**52 exactly,
 * and adding the float64 2**52 + l (bits l | bits(2**52)) rounds once */
static inline double to_f64(i64 a) {
    const double high = as_f64(((u64)a >> 32) ^ 0x4530000080000000ULL) - 0x1.00000801p+84; /* 2**84 + 2**63 + 2**52 */
    const double low = as_f64(((u64)a & 0xFFFFFFFFULL) | TWO52_BITS);
    return high + low;
}

/* float64 -> int64 truncated toward 0 (torch's .to(torch.int64)), for |d| < 2**63 */
static inline i64 trunc_to_i64(double d) {
    const double t = __builtin_trunc(d);
    const double h = __builtin_floor(t * INV_TWO32); /* |h| <= 2**31 */
    const double l = t - h * TWO32;                   /* exact, in [0, 2**32) */
    return (i64)(((u64)small_to_i64(h) << 32) + (u64)small_to_i64(l));
}

/* |t| as its bit pattern (an unsigned integer of T's width): ordered like the
 * magnitudes, NaN above inf, so that a NaN propagates to the peak as in torch's amax */
#ifdef EXACT_F64
typedef u64 peak_t;
#define ABS_MASK 0x7FFFFFFFFFFFFFFFULL
#else
typedef u32 peak_t;
#define ABS_MASK 0x7FFFFFFFu
#endif
static inline peak_t abs_bits(T t) { peak_t b; memcpy(&b, &t, sizeof b); return b & ABS_MASK; }
static inline double from_abs_bits(peak_t b) { T t; memcpy(&t, &b, sizeof t); return (double)t; }

/* v <- gamma v + (1 - gamma) f, x <- x + v (exact._forward_step); writes float(x) to xf
 * and the largest buffer state after the push to *state_max, and returns max(|xf|, |f|)
 * for the range check. gamma = n / 2**16. */
double NAME(forward_step)(i64 *restrict x, i64 *restrict v, i32 *restrict state,
                          const T *restrict f, T *restrict xf, i64 count, i64 n, int threads,
                          i32 *state_max)
{
    const double inv_n = 1.0 / (double)n;
    const double k = (double)((65536 - n) << 24); /* (1 - gamma) 2**40 */
    peak_t peak = 0;
    i32 smax = 0;
    PARALLEL_FOR_MAX_PEAK
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        peak_t local = 0;
        i32 local_smax = 0;
        for (i64 i = start; i < end; i++) {
            /* pop s = state mod n from the buffer state */
            const i32 st = state[i];
            const i32 q = (i32)(((double)st + 0.5) * inv_n);
            const u32 s = (u32)st - (u32)q * (u32)n;
            /* v' = floor((v n + s) / 2**16) + (1 - gamma) f; push z mod 2**16 */
            const i64 vi = v[i];
            const u32 z = (u32)(vi & 0xFFFF) * (u32)n + s;
            const T fi = f[i];
            const i64 inc = trunc_to_i64((double)fi * k);
            const i64 nv = (i64)((u64)(vi >> 16) * (u64)(u32)n + (u64)(z >> 16) + (u64)inc);
            const i32 ns = (i32)(((u32)q << 16) | (z & 0xFFFFu));
            state[i] = ns;
            local_smax = ns > local_smax ? ns : local_smax;
            v[i] = nv;
            const i64 nx = (i64)((u64)x[i] + (u64)nv);
            x[i] = nx;
            const T o = (T)(to_f64(nx) * INV_SCALE);
            xf[i] = o;
            const peak_t a = abs_bits(o), b = abs_bits(fi);
            const peak_t m = a > b ? a : b;
            local = m > local ? m : local;
        }
        peak = local > peak ? local : peak;
        smax = local_smax > smax ? local_smax : smax;
    }
    *state_max = smax;
    return from_abs_bits(peak);
}

/* x <- x - v (exact._undo_position); writes float(x) to xf */
void NAME(undo_position)(i64 *restrict x, const i64 *restrict v, T *restrict xf, i64 count,
                         int threads)
{
    PARALLEL_FOR
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        for (i64 i = start; i < end; i++) {
            const i64 nx = (i64)((u64)x[i] - (u64)v[i]);
            x[i] = nx;
            xf[i] = (T)(to_f64(nx) * INV_SCALE);
        }
    }
}

/* the inverse of forward_step's velocity update, given f(x_n) (exact._undo_velocity);
 * returns the smallest buffer state after the pop (INT32_MAX for no element) */
i32 NAME(undo_velocity)(i64 *restrict v, i32 *restrict state, const T *restrict f, i64 count,
                        i64 n, int threads)
{
    const double inv_n = 1.0 / (double)n, dn = (double)n;
    const double k = (double)((65536 - n) << 24);
    i32 smin = INT32_MAX;
    PARALLEL_FOR_MIN_STATE
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        i32 local_smin = INT32_MAX;
        for (i64 i = start; i < end; i++) {
            const i64 a = (i64)((u64)v[i] - (u64)trunc_to_i64((double)f[i] * k));
            /* hi, zh = divmod(a, n): a = A 2**16 + B, two exact float64 passes */
            const double a_hi = small_to_f64(a >> 16);
            const double q1 = __builtin_floor((a_hi + 0.5) * inv_n);
            const double r1 = a_hi - q1 * dn;
            const double w = r1 * 65536.0 + (double)(i32)(a & 0xFFFF);
            const double q2 = __builtin_trunc((w + 0.5) * inv_n);
            const double zh = w - q2 * dn;
            /* lo, s = divmod(zh 2**16 + (state mod 2**16), n); push s back */
            const i32 st = state[i];
            const double w2 = zh * 65536.0 + (double)(st & 0xFFFF);
            const double lo = __builtin_trunc((w2 + 0.5) * inv_n);
            const i32 s = (i32)(w2 - lo * dn);
            const i32 ns = (i32)((u32)(st >> 16) * (u32)n + (u32)s);
            state[i] = ns;
            local_smin = ns < local_smin ? ns : local_smin;
            /* v = hi 2**16 + lo = q1 2**32 + (q2 2**16 + lo) */
            v[i] = (i64)(((u64)small_to_i64(q1) << 32) + (u64)small_to_i64(q2 * 65536.0 + lo));
        }
        smin = local_smin < smin ? local_smin : smin;
    }
    return smin;
}

#ifndef EXACT_F64
/* The information buffer's 8-bit words (exact.InformationBuffer, the 31-bit layout):
 * spilling moves the low byte of every state >= limit to the next word, in element
 * order; refilling takes it back into every state < low. Sequential: they run about
 * once in 8 / log2(1 / gamma) layers. */

/* how many states are below low (spilling moves the count - count_below(limit) others) */
i64 count_below(const i32 *restrict state, i64 count, i32 low, int threads)
{
    i64 total = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN) reduction(+ : total)
#endif
    for (i64 i = 0; i < count; i++)
        total += state[i] < low;
    return total;
}

/* returns the largest state afterwards */
i32 spill_words(i32 *restrict state, i64 count, i32 limit, uint8_t *restrict words)
{
    i32 smax = 0;
    for (i64 i = 0; i < count; i++) {
        i32 s = state[i];
        if (s >= limit) {
            *words++ = (uint8_t)(s & 0xFF);
            s >>= 8;
            state[i] = s;
        }
        smax = s > smax ? s : smax;
    }
    return smax;
}

/* returns the smallest state afterwards */
i32 refill_words(i32 *restrict state, i64 count, i32 low, const uint8_t *restrict words)
{
    i32 smin = INT32_MAX;
    for (i64 i = 0; i < count; i++) {
        i32 s = state[i];
        if (s < low) {
            s = (i32)(((u32)s << 8) | *words++);
            state[i] = s;
        }
        smin = s < smin ? s : smin;
    }
    return smin;
}

/* the build's identity, checked by the loader */
int exact_kernels_version(void) { return 3; }
int exact_kernels_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
#endif
