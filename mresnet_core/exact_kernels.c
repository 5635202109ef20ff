/* The element-wise steps of the exact momentum update, in C for the CPU (exact_native.py).
 *
 * Each kernel computes, bit for bit, what its torch counterpart in exact.py computes
 * (torch_forward_step, torch_undo_position, torch_undo_velocity, for 31-bit buffer states
 * in an int32): the same integer operations modulo 2**64 and the same correctly rounded
 * float64 operations in the same order. Why not torch.compile: inductor's CPU code for
 * int64 is slow without AVX-512 (it has no vector int64 <-> float64 conversion there),
 * and every compiled call pays guard and wrapper overhead; a C loop the compiler
 * vectorises itself is 3-10x faster.
 *
 * The conversions are written so that the compiler can vectorise them on any ISA:
 *   int64 |a| < 2**51 -> float64: the bits of a + bits(1.5 * 2**52), as a float64,
 *     minus 1.5 * 2**52 (exact), and an integer-valued float64 back the same way;
 *   any int64 a -> float64: a = h 2**32 + l with 0 <= l < 2**32; h 2**32 and l are exact
 *     float64s, so fl(h 2**32 + l) is the correctly rounded value (what cvtsi2sd gives);
 *   floor division by n: exact in float64 (exact.floor_divmod_near).
 * Build with -ffp-contract=off (a fused multiply-add would round differently) and never
 * with -ffast-math (exact_native.CFLAGS, setup.py).
 *
 * One build serves every CPU: the kernels are compiled once per instruction set (x86-64:
 * AVX-512, AVX2, SSE4.1 and the baseline; elsewhere the baseline only) and once per
 * float type, by including this file into itself, and the best set the CPU supports is
 * chosen when the library is loaded (exact_kernels_isa() names it). Every variant gives
 * the same bits: they differ only in vector width. The OpenMP loops sit inside the
 * variants, so the threads run the variant's code too.
 */
#ifndef EXACT_KERNELS_PASS
#define EXACT_KERNELS_PASS 0
#endif

#if EXACT_KERNELS_PASS == 0
/* ---- shared definitions, then the variants, then the dispatch and the exported API ---- */
#include <stdint.h>
#include <string.h>

typedef int64_t i64;
typedef uint64_t u64;
typedef int32_t i32;
typedef uint32_t u32;

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define ALWAYS_INLINE static inline __attribute__((always_inline))

#define MAGIC 6755399441055744.0 /* 1.5 * 2**52 */
#define MAGIC_BITS 0x4338000000000000ULL
#define TWO52_BITS 0x4330000000000000ULL
#define TWO32 4294967296.0
#define INV_TWO32 (1.0 / 4294967296.0)
#define INV_SCALE 9.094947017729282e-13 /* 2**-40: exact.INV_SCALE */
#define SCALE 1099511627776.0            /* 2**40: exact.SCALE */
#define BLOCK 4096                       /* elements per parallel work item */
#define STATE_LOW_31 (1 << 23)           /* exact.STATE_LOW: every state of an empty buffer */
/* what undo_velocity does besides the velocity (velocity_block) */
#define VELOCITY_ONLY 0
#define VELOCITY_DIGEST 1
#define THEN_POSITION 2
#define POSITION_DIGEST 3

/* below PARALLEL_MIN elements a parallel region costs more than it saves */
#define PARALLEL_MIN 16384
#ifdef _OPENMP
#define PARALLEL_FOR \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN)")
#define PARALLEL_FOR_MAX_PEAK                                                                \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN) \
             reduction(max : peak, smax)")
#define PARALLEL_FOR_PEAK                                                                    \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN) \
             reduction(max : peak)")
#define PARALLEL_FOR_DIGEST                                                                  \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN) \
             reduction(+ : sum) reduction(^ : bits)")
#define PARALLEL_FOR_PEAK_DIGEST                                                             \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN) \
             reduction(max : peak) reduction(+ : sum) reduction(^ : bits)")
#define PARALLEL_FOR_STATES_DIGEST                                                           \
    _Pragma("omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN) \
             reduction(min : smin) reduction(max : smax) reduction(+ : sum) reduction(^ : bits)")
#else
#define PARALLEL_FOR
#define PARALLEL_FOR_MAX_PEAK
#define PARALLEL_FOR_PEAK
#define PARALLEL_FOR_DIGEST
#define PARALLEL_FOR_PEAK_DIGEST
#define PARALLEL_FOR_STATES_DIGEST
#endif

/* the loop has no dependence between iterations (an output may be an input's array,
 * read and written at the same index only): vectorise it without alias checks */
#if defined(__clang__)
#define SAME_INDEX_ONLY _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define SAME_INDEX_ONLY _Pragma("GCC ivdep")
#else
#define SAME_INDEX_ONLY
#endif

/* Helpers are always inlined, so that they take the instruction set of the variant
 * they are inlined into (a call would also stop the loops from vectorising). */
ALWAYS_INLINE double as_f64(u64 b) { double d; memcpy(&d, &b, 8); return d; }
ALWAYS_INLINE u64 bits_f64(double d) { u64 b; memcpy(&b, &d, 8); return b; }

/* int64 |a| < 2**51 -> float64, exactly */
ALWAYS_INLINE double small_to_f64(i64 a) { return as_f64((u64)a + MAGIC_BITS) - MAGIC; }
/* integer-valued float64 |d| < 2**51 -> int64 */
ALWAYS_INLINE i64 small_to_i64(double d) { return (i64)(bits_f64(d + MAGIC) - MAGIC_BITS); }

/* any int64 -> float64, correctly rounded: with h the high 32 bits of a (signed) and l
 * the low 32 (unsigned), the float64 with bits (h + 2**31) | bits(2**84) is exactly
 * 2**84 + (h + 2**31) 2**32, minus 2**84 + 2**63 + 2**52 gives h 2**32 - 2**52 exactly,
 * and adding the float64 2**52 + l (bits l | bits(2**52)) rounds once */
ALWAYS_INLINE double to_f64(i64 a) {
    const double high = as_f64(((u64)a >> 32) ^ 0x4530000080000000ULL) - 0x1.00000801p+84; /* 2**84 + 2**63 + 2**52 */
    const double low = as_f64(((u64)a & 0xFFFFFFFFULL) | TWO52_BITS);
    return high + low;
}

/* float64 -> int64 truncated toward 0 (torch's .to(torch.int64)), for |d| < 2**63 */
ALWAYS_INLINE i64 trunc_to_i64(double d) {
    const double t = __builtin_trunc(d);
    const double h = __builtin_floor(t * INV_TWO32); /* |h| <= 2**31 */
    const double l = t - h * TWO32;                   /* exact, in [0, 2**32) */
    return (i64)(((u64)small_to_i64(h) << 32) + (u64)small_to_i64(l));
}

/* |t| as its bit pattern (an unsigned integer of t's width): ordered like the
 * magnitudes, NaN above inf, so that a NaN propagates to the peak as in torch's amax */
ALWAYS_INLINE u32 abs_bits_f32(float t) { u32 b; memcpy(&b, &t, 4); return b & 0x7FFFFFFFu; }
ALWAYS_INLINE u64 abs_bits_f64(double t) { u64 b; memcpy(&b, &t, 8); return b & 0x7FFFFFFFFFFFFFFFULL; }
static double from_abs_bits_f32(u32 b) { float t; memcpy(&t, &b, 4); return (double)t; }
static double from_abs_bits_f64(u64 b) { double t; memcpy(&t, &b, 8); return t; }

/* The variants: a name and the instruction set it is compiled for. */
#undef EXACT_KERNELS_PASS
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define EXACT_X86 1
#if defined(__clang__)
#define AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw")))
#else /* 512-bit vectors (GCC's default prefers 256): these loops are compute-bound, 1.2-1.6x faster */
#define AVX512_TARGET __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,prefer-vector-width=512")))
#endif
#define EXACT_KERNELS_PASS 1
#define VARIANT avx512
#define VARIANT_TARGET AVX512_TARGET
#define NATIVE_I64_CONVERSIONS 1 /* AVX512DQ converts int64 <-> float64 in one instruction */
#define VARIANT_FMA 1             /* fused multiply-adds where torch's vector code takes them */
#include "exact_kernels.c"
#undef NATIVE_I64_CONVERSIONS
#undef VARIANT
#undef VARIANT_TARGET
#define VARIANT avx2
#define VARIANT_TARGET __attribute__((target("avx2,fma")))
#include "exact_kernels.c"
#undef VARIANT_FMA
#undef VARIANT
#undef VARIANT_TARGET
#define VARIANT sse41
#define VARIANT_TARGET __attribute__((target("sse4.1")))
#include "exact_kernels.c"
#undef VARIANT
#undef VARIANT_TARGET
#undef EXACT_KERNELS_PASS
#endif
#define EXACT_KERNELS_PASS 1
#define VARIANT baseline
#define VARIANT_TARGET
#include "exact_kernels.c"
#undef VARIANT
#undef VARIANT_TARGET
#undef EXACT_KERNELS_PASS

/* ---- dispatch ---- */
typedef double (*forward_f32_fn)(i64 *, i64 *, i32 *, const float *, const float *, float *, i64, i64, int,
                                 i32 *, const float *);
typedef double (*forward_f64_fn)(i64 *, i64 *, i32 *, const double *, const double *, double *, i64, i64, int,
                                 i32 *, const double *);
typedef void (*position_f32_fn)(i64 *, const i64 *, float *, i64, int, i64 *);
typedef void (*position_f64_fn)(i64 *, const i64 *, double *, i64, int, i64 *);
typedef i32 (*velocity_f32_fn)(i64 *, i32 *, const float *, const float *, i64 *, float *, i64, i64, int, i32 *,
                                i64 *);
typedef i32 (*velocity_f64_fn)(i64 *, i32 *, const double *, const double *, i64 *, double *, i64, i64, int,
                                i32 *, i64 *);
typedef double (*start_f32_fn)(const float *, float *, i64, int, i64 *);
typedef double (*start_f64_fn)(const double *, double *, i64, int, i64 *);
typedef void (*adjoint_f32_fn)(float *, const float *, const float *, float *, i64, double, double, int, int, int);
typedef void (*adjoint_f64_fn)(double *, const double *, const double *, double *, i64, double, double, int, int,
                               int);
typedef double (*to_fixed_f32_fn)(const float *, i64 *, i64, int);
typedef double (*to_fixed_f64_fn)(const double *, i64 *, i64, int);
typedef void (*to_float_f32_fn)(const i64 *, float *, i64, int);
typedef void (*to_float_f64_fn)(const i64 *, double *, i64, int);

struct variant {
    const char *name;
    int (*supported)(void);
    forward_f32_fn forward_step_f32;
    position_f32_fn undo_position_f32;
    velocity_f32_fn undo_velocity_f32;
    forward_f64_fn forward_step_f64;
    position_f64_fn undo_position_f64;
    velocity_f64_fn undo_velocity_f64;
    to_fixed_f32_fn to_fixed_f32;
    to_float_f32_fn to_float_f32;
    to_fixed_f64_fn to_fixed_f64;
    to_float_f64_fn to_float_f64;
    start_f32_fn stack_start_f32;
    start_f64_fn stack_start_f64;
    adjoint_f32_fn adjoint_update_f32;
    adjoint_f64_fn adjoint_update_f64;
};
#define ENTRY(v, test)                                                                        \
    {#v, test, forward_step_f32_##v, undo_position_f32_##v, undo_velocity_f32_##v,           \
     forward_step_f64_##v, undo_position_f64_##v, undo_velocity_f64_##v, to_fixed_f32_##v,       \
     to_float_f32_##v, to_fixed_f64_##v, to_float_f64_##v, stack_start_f32_##v, stack_start_f64_##v,  \
     adjoint_update_f32_##v, adjoint_update_f64_##v}

static int always(void) { return 1; }
#ifdef EXACT_X86
static int has_avx512(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq")
           && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
}
static int has_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }
static int has_sse41(void) { return __builtin_cpu_supports("sse4.1"); }
#endif

/* best first */
static const struct variant variants[] = {
#ifdef EXACT_X86
    ENTRY(avx512, has_avx512), ENTRY(avx2, has_avx2), ENTRY(sse41, has_sse41),
#endif
    ENTRY(baseline, always),
};
#define VARIANTS ((int)(sizeof variants / sizeof variants[0]))
static const struct variant *active = &variants[VARIANTS - 1];

/* picks the best variant once, when the library is loaded (before any kernel runs) */
__attribute__((constructor)) static void choose_variant(void) {
#ifdef EXACT_X86
    __builtin_cpu_init();
#endif
    for (int i = 0; i < VARIANTS; i++)
        if (variants[i].supported()) {
            active = &variants[i];
            return;
        }
}

/* the variant in use ("avx512", "avx2", "sse41" or "baseline") */
const char *exact_kernels_isa(void) { return active->name; }

/* the variants this CPU can run, best first, separated by spaces */
const char *exact_kernels_isas(void) {
    static char names[64];
    if (!names[0])
        for (int i = 0; i < VARIANTS; i++)
            if (variants[i].supported()) {
                if (names[0]) strcat(names, " ");
                strcat(names, variants[i].name);
            }
    return names;
}

/* Use variant `name` from now on (for tests and benchmarks: every variant gives the same
 * bits); returns 0, and changes nothing, if the CPU cannot run it. Not to be called
 * while kernels run. */
int exact_kernels_use_isa(const char *name) {
    for (int i = 0; i < VARIANTS; i++)
        if (strcmp(variants[i].name, name) == 0 && variants[i].supported()) {
            active = &variants[i];
            return 1;
        }
    return 0;
}

/* ---- the exported kernels: the active variant's ---- */

/* v <- gamma v + (1 - gamma) f, x <- x + v (exact.torch_forward_step); writes float(x)
 * to xf and the largest buffer state after the push to *state_max, and returns
 * max(|xf|, |f|) for the range check. gamma = n / 2**16. The residual is f = out - base
 * (rounded in T, as torch's out - base) for a block that adds its own skip connection,
 * f = out where base is NULL; xf may be out's own array (overwritten as it is read).
 * x0 non-NULL: the stack's first layer, from x = to_fixed(x0), v = 0 and an empty
 * buffer (x, v and state are then written only: they may be uninitialised). */
double forward_step_f32(i64 *x, i64 *v, i32 *state, const float *out, const float *base, float *xf,
                        i64 count, i64 n, int threads, i32 *state_max, const float *x0) {
    return active->forward_step_f32(x, v, state, out, base, xf, count, n, threads, state_max, x0);
}
double forward_step_f64(i64 *x, i64 *v, i32 *state, const double *out, const double *base, double *xf,
                        i64 count, i64 n, int threads, i32 *state_max, const double *x0) {
    return active->forward_step_f64(x, v, state, out, base, xf, count, n, threads, state_max, x0);
}

/* x <- x - v (exact.torch_undo_position); writes float(x) to xf, and where digest is
 * not NULL the wrapping sum and xor of the new x to digest[0..1] (fingerprint_i64's) */
void undo_position_f32(i64 *x, const i64 *v, float *xf, i64 count, int threads, i64 *digest) {
    active->undo_position_f32(x, v, xf, count, threads, digest);
}
void undo_position_f64(i64 *x, const i64 *v, double *xf, i64 count, int threads, i64 *digest) {
    active->undo_position_f64(x, v, xf, count, threads, digest);
}

/* the inverse of forward_step's velocity update, given f(x_n) = out - base (or out where
 * base is NULL, as in forward_step) (exact.torch_undo_velocity); returns the smallest
 * buffer state after the pop (INT32_MAX for no element), writes the largest to
 * *state_max (INT32_MIN for no element). Where xf is NULL, digest (if not NULL) takes the
 * wrapping sum and xor of the new v; otherwise the same pass goes on to the layer below's
 * undo_position with that v (x <- x - v, float x into xf, which may be out's memory) and
 * digest takes the new x's */
i32 undo_velocity_f32(i64 *v, i32 *state, const float *out, const float *base, i64 *x, float *xf, i64 count,
                      i64 n, int threads, i32 *state_max, i64 *digest) {
    return active->undo_velocity_f32(v, state, out, base, x, xf, count, n, threads, state_max, digest);
}
i32 undo_velocity_f64(i64 *v, i32 *state, const double *out, const double *base, i64 *x, double *xf, i64 count,
                      i64 n, int threads, i32 *state_max, i64 *digest) {
    return active->undo_velocity_f64(v, state, out, base, x, xf, count, n, threads, state_max, digest);
}

/* a stack's start for v0 = 0 (exact.to_fixed, exact.to_float and fingerprint_i64 in one
 * pass, without storing the int64 x): float(to_fixed(t)) into xf, the digest of
 * to_fixed(t) into digest[0..1]; returns max |t| (NaN above inf) for the range check */
double stack_start_f32(const float *t, float *xf, i64 count, int threads, i64 *digest) {
    return active->stack_start_f32(t, xf, count, threads, digest);
}
double stack_start_f64(const double *t, double *xf, i64 count, int threads, i64 *digest) {
    return active->stack_start_f64(t, xf, count, threads, digest);
}

/* one layer of the momentum adjoint's element-wise update (adjoint.py), in one pass:
 * a' = a + g + alpha c (a or g NULL: left out; has_alpha 0: no c term), written to
 * a_out (which may be a's or g's array); then, unless lerp is 0, c <- lerp(c, a', w)
 * in place, computed from c (lerp 1, for w < 0.5) or from a' (lerp 2), as torch does */
void adjoint_update_f32(float *a_out, const float *a, const float *g, float *c, i64 count, double alpha,
                        double w, int has_alpha, int lerp, int threads) {
    active->adjoint_update_f32(a_out, a, g, c, count, alpha, w, has_alpha, lerp, threads);
}
void adjoint_update_f64(double *a_out, const double *a, const double *g, double *c, i64 count, double alpha,
                        double w, int has_alpha, int lerp, int threads) {
    active->adjoint_update_f64(a_out, a, g, c, count, alpha, w, has_alpha, lerp, threads);
}

/* float -> int64 fixed point, truncated (exact.to_fixed); returns max |t| (NaN above inf)
 * for the range check, which the caller makes before using x */
double to_fixed_f32(const float *t, i64 *x, i64 count, int threads) {
    return active->to_fixed_f32(t, x, count, threads);
}
double to_fixed_f64(const double *t, i64 *x, i64 count, int threads) {
    return active->to_fixed_f64(t, x, count, threads);
}

/* int64 fixed point -> float, correctly rounded through float64 (exact.to_float) */
void to_float_f32(const i64 *x, float *out, i64 count, int threads) { active->to_float_f32(x, out, count, threads); }
void to_float_f64(const i64 *x, double *out, i64 count, int threads) { active->to_float_f64(x, out, count, threads); }

/* the wrapping sum and the xor of int64 values (exact_walk.fingerprint), in one pass */
void fingerprint_i64(const i64 *restrict x, i64 count, int threads, i64 *out)
{
    u64 sum = 0, bits = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if(count >= PARALLEL_MIN) reduction(+ : sum) reduction(^ : bits)
#endif
    for (i64 i = 0; i < count; i++) {
        sum += (u64)x[i];
        bits ^= (u64)x[i];
    }
    out[0] = (i64)sum;
    out[1] = (i64)bits;
}

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

/* the build's identity, checked by the loader: the interface version, the hash of the
 * source and flags it was built from (-DEXACT_KERNELS_KEY, set by setup.py and
 * exact_native.py; empty if not given), and whether it runs on OpenMP threads */
int exact_kernels_version(void) { return 8; }
#ifndef EXACT_KERNELS_KEY
#define EXACT_KERNELS_KEY ""
#endif
const char *exact_kernels_key(void) { return EXACT_KERNELS_KEY; }
int exact_kernels_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#elif EXACT_KERNELS_PASS == 1
/* ---- one variant (VARIANT, VARIANT_TARGET): its kernels for float and double ---- */
#undef EXACT_KERNELS_PASS
#define EXACT_KERNELS_PASS 2
#define T float
#define TYPE f32
#define PEAK_T u32
#define FMA_T __builtin_fmaf
#include "exact_kernels.c"
#undef T
#undef TYPE
#undef PEAK_T
#undef FMA_T
#define T double
#define TYPE f64
#define PEAK_T u64
#define FMA_T __builtin_fma
#include "exact_kernels.c"
#undef T
#undef TYPE
#undef PEAK_T
#undef FMA_T
#undef EXACT_KERNELS_PASS
#define EXACT_KERNELS_PASS 1

#else
/* ---- the kernels of one variant for one float type T: NAME(fn) is fn_TYPE_VARIANT ---- */
#define NAME(fn) CAT(CAT(CAT(fn, _), TYPE), CAT(_, VARIANT))
/* int64 <-> float64 conversions: the instruction set's own where it has one for vectors
 * (the same bits: a correctly rounded conversion, a truncation), else the helpers above */
#if defined(NATIVE_I64_CONVERSIONS)
#define TO_F64(a) ((double)(a))
#define TRUNC_TO_I64(d) ((i64)(d))
#else
#define TO_F64(a) to_f64(a)
#define TRUNC_TO_I64(d) trunc_to_i64(d)
#endif
#define ABS_BITS CAT(abs_bits_, TYPE)
#define FROM_ABS_BITS CAT(from_abs_bits_, TYPE)

/* one block [start, end) of forward_step; with_base and first are constants at each call,
 * so that each case compiles to its own loop. first: the stack's first layer, from the
 * float input x0 (`start`) with v = 0 and an empty buffer, neither read (x, v and state
 * are only written) */
VARIANT_TARGET ALWAYS_INLINE void NAME(forward_block)(i64 *restrict x, i64 *restrict v, i32 *restrict state,
                                                      const T *out, const T *base, T *xf, const T *x0, i64 start,
                                                      i64 end, i64 n, const int with_base, const int first,
                                                      PEAK_T *peak, i32 *smax)
{
    const double inv_n = 1.0 / (double)n;
    const double k = (double)((65536 - n) << 24); /* (1 - gamma) 2**40 */
    PEAK_T local = 0;
    i32 local_smax = 0;
    SAME_INDEX_ONLY
    for (i64 i = start; i < end; i++) {
        /* pop s = state mod n from the buffer state */
        const i32 st = first ? STATE_LOW_31 : state[i];
        const i32 q = (i32)(((double)st + 0.5) * inv_n);
        const u32 s = (u32)st - (u32)q * (u32)n;
        /* v' = floor((v n + s) / 2**16) + (1 - gamma) f; push z mod 2**16 */
        const i64 vi = first ? 0 : v[i];
        const u32 z = (u32)(vi & 0xFFFF) * (u32)n + s;
        const T fi = with_base ? (T)(out[i] - base[i]) : out[i];
        const i64 inc = TRUNC_TO_I64((double)fi * k);
        const i64 nv = (i64)((u64)(vi >> 16) * (u64)(u32)n + (u64)(z >> 16) + (u64)inc);
        const i32 ns = (i32)(((u32)q << 16) | (z & 0xFFFFu));
        state[i] = ns;
        local_smax = ns > local_smax ? ns : local_smax;
        v[i] = nv;
        const i64 xi = first ? TRUNC_TO_I64((double)x0[i] * SCALE) : x[i]; /* to_fixed's */
        const i64 nx = (i64)((u64)xi + (u64)nv);
        x[i] = nx;
        const T o = (T)(TO_F64(nx) * INV_SCALE);
        xf[i] = o;
        const PEAK_T a = ABS_BITS(o), b = ABS_BITS(fi);
        const PEAK_T m = a > b ? a : b;
        local = m > local ? m : local;
    }
    *peak = local;
    *smax = local_smax;
}

VARIANT_TARGET
static double NAME(forward_step)(i64 *restrict x, i64 *restrict v, i32 *restrict state, const T *out,
                                 const T *base, T *xf, i64 count, i64 n, int threads, i32 *state_max,
                                 const T *x0)
{
    PEAK_T peak = 0;
    i32 smax = 0;
    PARALLEL_FOR_MAX_PEAK
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        PEAK_T local;
        i32 local_smax;
        if (x0 && base)
            NAME(forward_block)(x, v, state, out, base, xf, x0, start, end, n, 1, 1, &local, &local_smax);
        else if (x0)
            NAME(forward_block)(x, v, state, out, base, xf, x0, start, end, n, 0, 1, &local, &local_smax);
        else if (base)
            NAME(forward_block)(x, v, state, out, base, xf, x0, start, end, n, 1, 0, &local, &local_smax);
        else
            NAME(forward_block)(x, v, state, out, base, xf, x0, start, end, n, 0, 0, &local, &local_smax);
        peak = local > peak ? local : peak;
        smax = local_smax > smax ? local_smax : smax;
    }
    *state_max = smax;
    return FROM_ABS_BITS(peak);
}

/* one block [start, end) of undo_position (with_digest: also the wrapping sum and xor of
 * the new x, into digest[0..1]) */
VARIANT_TARGET ALWAYS_INLINE void NAME(position_block)(i64 *restrict x, const i64 *restrict v, T *restrict xf,
                                                       i64 start, i64 end, const int with_digest, u64 *digest)
{
    u64 sum = 0, bits = 0;
    for (i64 i = start; i < end; i++) {
        const i64 nx = (i64)((u64)x[i] - (u64)v[i]);
        x[i] = nx;
        xf[i] = (T)(TO_F64(nx) * INV_SCALE);
        if (with_digest) {
            sum += (u64)nx;
            bits ^= (u64)nx;
        }
    }
    digest[0] = sum;
    digest[1] = bits;
}

VARIANT_TARGET
static void NAME(undo_position)(i64 *restrict x, const i64 *restrict v, T *restrict xf, i64 count,
                                int threads, i64 *digest)
{
    u64 sum = 0, bits = 0;
    const int with_digest = digest != NULL;
    PARALLEL_FOR_DIGEST
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        u64 local[2];
        if (with_digest)
            NAME(position_block)(x, v, xf, start, end, 1, local);
        else
            NAME(position_block)(x, v, xf, start, end, 0, local);
        sum += local[0];
        bits ^= local[1];
    }
    if (digest) {
        digest[0] = (i64)sum;
        digest[1] = (i64)bits;
    }
}

/* one block [start, end) of undo_velocity (with_base as in forward_block); mode: what else
 * the pass does with the new v. VELOCITY_DIGEST: the wrapping sum and xor of v into
 * digest[0..1]. THEN_POSITION: also the next layer down's undo_position, x <- x - v and
 * float(x) into xf (which may be out's own memory: each element is read before it is
 * written), so that v is streamed once for both; POSITION_DIGEST: that, and the digest of
 * the new x. The smallest and largest states go to range[0] and range[1]. */
VARIANT_TARGET ALWAYS_INLINE void NAME(velocity_block)(i64 *restrict v, i32 *restrict state, const T *out,
                                                       const T *base, i64 *restrict x, T *xf, i64 start,
                                                       i64 end, i64 n, const int with_base, const int mode,
                                                       i32 *range, u64 *digest)
{
    const double inv_n = 1.0 / (double)n, dn = (double)n;
    const double k = (double)((65536 - n) << 24);
    i32 local_smin = INT32_MAX, local_smax = INT32_MIN;
    u64 sum = 0, bits = 0;
    SAME_INDEX_ONLY
    for (i64 i = start; i < end; i++) {
        const T fi = with_base ? (T)(out[i] - base[i]) : out[i];
        const i64 a = (i64)((u64)v[i] - (u64)TRUNC_TO_I64((double)fi * k));
        /* v, s = divmod(a 2**16 + (state mod 2**16), n) (torch_undo_velocity's hi 2**16 + lo
         * and s), in two exact float64 passes (floor_divmod_near): with A = a >> 16
         * (|A| < 2**46) and B = a mod 2**16, A = q1 n + r1, then R = r1 2**32 + B 2**16
         * + (state mod 2**16) < n 2**32 <= 2**48 gives R = q n + s: v = q1 2**32 + q */
        const double a_hi = small_to_f64(a >> 16);
        const double q1 = __builtin_floor((a_hi + 0.5) * inv_n);
        const double r1 = a_hi - q1 * dn;
        const i32 st = state[i];
        const u32 low = ((u32)a << 16) | ((u32)st & 0xFFFFu);
        const double r = r1 * 4294967296.0 + small_to_f64((i64)low);
        const double q = __builtin_trunc((r + 0.5) * inv_n);
        const i32 s = (i32)(r - q * dn);
        /* push s back */
        const i32 ns = (i32)((u32)(st >> 16) * (u32)n + (u32)s);
        state[i] = ns;
        local_smin = ns < local_smin ? ns : local_smin;
        local_smax = ns > local_smax ? ns : local_smax;
        const i64 nv = (i64)(((u64)small_to_i64(q1) << 32) + (u64)small_to_i64(q));
        v[i] = nv;
        if (mode == VELOCITY_DIGEST) {
            sum += (u64)nv;
            bits ^= (u64)nv;
        }
        if (mode >= THEN_POSITION) { /* undo_position's, on the v just made */
            const i64 nx = (i64)((u64)x[i] - (u64)nv);
            x[i] = nx;
            xf[i] = (T)(TO_F64(nx) * INV_SCALE);
            if (mode == POSITION_DIGEST) {
                sum += (u64)nx;
                bits ^= (u64)nx;
            }
        }
    }
    range[0] = local_smin;
    range[1] = local_smax;
    digest[0] = sum;
    digest[1] = bits;
}

#define VELOCITY_CASE(with_base, mode)                                                                 \
    NAME(velocity_block)(v, state, out, base, x, xf, start, end, n, with_base, mode, range, local)

VARIANT_TARGET
static i32 NAME(undo_velocity)(i64 *restrict v, i32 *restrict state, const T *out, const T *base, i64 *x,
                               T *xf, i64 count, i64 n, int threads, i32 *state_max, i64 *digest)
{
    i32 smin = INT32_MAX, smax = INT32_MIN;
    u64 sum = 0, bits = 0;
    const int mode = xf ? (digest ? POSITION_DIGEST : THEN_POSITION) : (digest ? VELOCITY_DIGEST : VELOCITY_ONLY);
    PARALLEL_FOR_STATES_DIGEST
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        i32 range[2];
        u64 local[2];
        switch (mode * 2 + (base != NULL)) {
        case 0: VELOCITY_CASE(0, VELOCITY_ONLY); break;
        case 1: VELOCITY_CASE(1, VELOCITY_ONLY); break;
        case 2: VELOCITY_CASE(0, VELOCITY_DIGEST); break;
        case 3: VELOCITY_CASE(1, VELOCITY_DIGEST); break;
        case 4: VELOCITY_CASE(0, THEN_POSITION); break;
        case 5: VELOCITY_CASE(1, THEN_POSITION); break;
        case 6: VELOCITY_CASE(0, POSITION_DIGEST); break;
        default: VELOCITY_CASE(1, POSITION_DIGEST); break;
        }
        smin = range[0] < smin ? range[0] : smin;
        smax = range[1] > smax ? range[1] : smax;
        sum += local[0];
        bits ^= local[1];
    }
    if (state_max)
        *state_max = smax;
    if (digest) {
        digest[0] = (i64)sum;
        digest[1] = (i64)bits;
    }
    return smin;
}
#undef VELOCITY_CASE

/* a stack's start for v0 = 0: float(to_fixed(t)) into xf, the digest (wrapping sum, xor)
 * of to_fixed(t), and max |t| (NaN above inf) for the range check; the int64 x itself is
 * left to the first layer's forward_step, which takes t as x0 */
VARIANT_TARGET
static double NAME(stack_start)(const T *restrict t, T *restrict xf, i64 count, int threads, i64 *digest)
{
    PEAK_T peak = 0;
    u64 sum = 0, bits = 0;
    PARALLEL_FOR_PEAK_DIGEST
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        PEAK_T local = 0;
        u64 local_sum = 0, local_bits = 0;
        for (i64 i = start; i < end; i++) {
            const T ti = t[i];
            const i64 fx = TRUNC_TO_I64((double)ti * SCALE);
            xf[i] = (T)(TO_F64(fx) * INV_SCALE);
            local_sum += (u64)fx;
            local_bits ^= (u64)fx;
            const PEAK_T a = ABS_BITS(ti);
            local = a > local ? a : local;
        }
        peak = local > peak ? local : peak;
        sum += local_sum;
        bits ^= local_bits;
    }
    digest[0] = (i64)sum;
    digest[1] = (i64)bits;
    return FROM_ABS_BITS(peak);
}

/* x y + z as torch's vector code computes a + alpha b and lerp: rounded once where the
 * variant has fused multiply-adds (its results are then torch's on such CPUs), else twice.
 * Not contracted by the compiler (-ffp-contract=off): only where written so. */
#if VARIANT_FMA
#define MULADD(x, y, z) FMA_T(x, y, z)
#else
#define MULADD(x, y, z) ((x) * (y) + (z))
#endif

/* one block of adjoint_update; the flags are constants at each call (its own loop each) */
VARIANT_TARGET ALWAYS_INLINE void NAME(adjoint_block)(T *a_out, const T *a, const T *g, T *c, i64 start, i64 end,
                                                      T alpha, T w, const int has_a, const int has_g,
                                                      const int has_alpha, const int lerp)
{
    const T w_minus_1 = w - (T)1;
    SAME_INDEX_ONLY
    for (i64 i = start; i < end; i++) {
        const T ci = c[i];
        T ai = has_a ? a[i] : (T)0;
        if (has_g)
            ai = has_a ? ai + g[i] : g[i];
        if (has_alpha) /* torch's add(g, c, alpha=...); alpha -1: a - c exactly rounded */
            ai = (has_a || has_g) ? MULADD(alpha, ci, ai) : alpha * ci;
        a_out[i] = ai;
        if (lerp == 1) /* torch's lerp: from the nearer end */
            c[i] = MULADD(w, ai - ci, ci);
        else if (lerp == 2)
            c[i] = MULADD(w_minus_1, ai - ci, ai);
    }
}
#undef MULADD

#define ADJOINT_CASE(ha, hg, hal, lp)                                                        \
    case (ha) | (hg) << 1 | (hal) << 2 | (lp) << 3:                                          \
        NAME(adjoint_block)(a_out, a, g, c, start, end, alpha, w, ha, hg, hal, lp);        \
        break;
#define ADJOINT_CASES(lp)                                                                    \
    ADJOINT_CASE(0, 0, 0, lp) ADJOINT_CASE(1, 0, 0, lp) ADJOINT_CASE(0, 1, 0, lp)            \
    ADJOINT_CASE(1, 1, 0, lp) ADJOINT_CASE(0, 0, 1, lp) ADJOINT_CASE(1, 0, 1, lp)            \
    ADJOINT_CASE(0, 1, 1, lp) ADJOINT_CASE(1, 1, 1, lp)

VARIANT_TARGET
static void NAME(adjoint_update)(T *a_out, const T *a, const T *g, T *c, i64 count, double alpha, double w,
                                 int has_alpha, int lerp, int threads)
{
    const int flags = (a != NULL) | (g != NULL) << 1 | (has_alpha != 0) << 2 | lerp << 3;
    PARALLEL_FOR
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        switch (flags) {
            ADJOINT_CASES(0)
            ADJOINT_CASES(1)
            ADJOINT_CASES(2)
        }
    }
}
#undef ADJOINT_CASE
#undef ADJOINT_CASES

VARIANT_TARGET
static double NAME(to_fixed)(const T *restrict t, i64 *restrict x, i64 count, int threads)
{
    PEAK_T peak = 0;
    PARALLEL_FOR_PEAK
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        PEAK_T local = 0;
        for (i64 i = start; i < end; i++) {
            const T ti = t[i];
            x[i] = TRUNC_TO_I64((double)ti * SCALE);
            const PEAK_T a = ABS_BITS(ti);
            local = a > local ? a : local;
        }
        peak = local > peak ? local : peak;
    }
    return FROM_ABS_BITS(peak);
}

VARIANT_TARGET
static void NAME(to_float)(const i64 *restrict x, T *restrict out, i64 count, int threads)
{
    PARALLEL_FOR
    for (i64 start = 0; start < count; start += BLOCK) {
        const i64 end = start + BLOCK < count ? start + BLOCK : count;
        for (i64 i = start; i < end; i++)
            out[i] = (T)(TO_F64(x[i]) * INV_SCALE);
    }
}

#undef NAME
#undef TO_F64
#undef TRUNC_TO_I64
#undef ABS_BITS
#undef FROM_ABS_BITS
#endif
