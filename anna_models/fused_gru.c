/* One GRU time step's gates, fused: what PyTorch's CPU GRU does in about ten passes over memory.
 *
 * PyTorch's GRU (its formulas, its gate order r, z, n):
 *   r = sigmoid(gi_r + gh_r)        gi = x W_ih^T + b_ih, precomputed for every step
 *   z = sigmoid(gi_z + gh_z)        gh = h_prev W_hh^T + b_hh, one matrix product a step (torch.addmm)
 *   n = tanh(gi_n + r * gh_n)
 *   h = (1 - z) * n + z * h_prev
 * The caller (anna_models/fused_gru.py) runs the matrix products; these loops do the rest of a step for
 * `rows` rows, each row's gates laid out as [r | z | n], `hidden` wide each. Built with -O3 -ffast-math:
 * the loops over a row vectorise, which is why exp is written out below (a call to expf would not).
 */
#include <stdint.h>

/* exp(x) for float32, relative error below 1e-7 over [-80, 80]: x = k ln2 + r with |r| <= ln2 / 2,
 * a degree-7 Taylor-like polynomial for exp(r), and 2^k put straight into the exponent bits. */
static inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float k = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - k * 0.693359375f + k * 2.12194440e-4f; /* ln2 in two parts, so r keeps its low bits */
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } scale;
    scale.i = ((int32_t)k + 127) << 23;
    return p * scale.f;
}

/* Forward: the new states h (rows, hidden) and, for the backward pass, saved = [r | z | n] per row. */
void anna_gru_forward(int64_t rows, int64_t hidden, const float *restrict gi, const float *restrict gh,
                      const float *restrict h_prev, float *restrict h, float *restrict saved) {
    const int64_t width = 3 * hidden;
    for (int64_t b = 0; b < rows; b++) {
        const float *restrict xi = gi + b * width, *restrict xh = gh + b * width;
        const float *restrict hp = h_prev + b * hidden;
        float *restrict out = h + b * hidden, *restrict s = saved + b * width;
        for (int64_t j = 0; j < hidden; j++) {
            float r = 1.0f / (1.0f + exp_approx(-(xi[j] + xh[j])));
            float z = 1.0f / (1.0f + exp_approx(-(xi[hidden + j] + xh[hidden + j])));
            float n = 2.0f / (1.0f + exp_approx(-2.0f * (xi[2 * hidden + j] + r * xh[2 * hidden + j]))) - 1.0f;
            out[j] = n + z * (hp[j] - n);
            s[j] = r;
            s[hidden + j] = z;
            s[2 * hidden + j] = n;
        }
    }
}

/* Backward of one step. The gradient reaching h is d_out (from the step's outputs) + d_next (through the
 * next step). Writes the gradients of the gate inputs: d_gi (of gi, also b_ih's), d_gh (of gh, also b_hh's
 * and the product h_prev W_hh^T), and d_direct = the part of h_prev's gradient that skips W_hh (dh * z);
 * the caller adds d_gh W_hh to it. */
void anna_gru_backward(int64_t rows, int64_t hidden, const float *restrict d_out, const float *restrict d_next,
                       const float *restrict saved, const float *restrict gh, const float *restrict h_prev,
                       float *restrict d_gi, float *restrict d_gh, float *restrict d_direct) {
    const int64_t width = 3 * hidden;
    for (int64_t b = 0; b < rows; b++) {
        const float *restrict s = saved + b * width, *restrict xh = gh + b * width;
        const float *restrict hp = h_prev + b * hidden;
        const float *restrict g1 = d_out + b * hidden, *restrict g2 = d_next + b * hidden;
        float *restrict di = d_gi + b * width, *restrict dh_ = d_gh + b * width;
        float *restrict dd = d_direct + b * hidden;
        for (int64_t j = 0; j < hidden; j++) {
            float r = s[j], z = s[hidden + j], n = s[2 * hidden + j];
            float dh = g1[j] + g2[j];
            float dn = dh * (1.0f - z) * (1.0f - n * n);
            float dz = dh * (hp[j] - n) * z * (1.0f - z);
            float dr = dn * xh[2 * hidden + j] * r * (1.0f - r);
            di[j] = dr;
            di[hidden + j] = dz;
            di[2 * hidden + j] = dn;
            dh_[j] = dr;
            dh_[hidden + j] = dz;
            dh_[2 * hidden + j] = dn * r;
            dd[j] = dh * z;
        }
    }
}

/* Scoring: one step for the rows still inside their history (t < lengths[b]), pooling as it goes.
 * A row's input gates are made here, from three parts (bias may be NULL, codes and x 0 wide):
 *   gi = bias + sum over f of tables[codes[f]] + x W_x
 * tables (vocab, 3 hidden) are embeddings already multiplied by their columns of W_ih, codes index their
 * rows, and x (n_x wide) are the features that have no table, with W_x (n_x, 3 hidden) their columns.
 * h (rows, hidden) is updated in place; sum and peak accumulate the states, last keeps the state after a
 * row's last event. Neither the gates nor the per-step states are stored, and padded steps cost nothing
 * but the product h W_hh^T that the caller runs for the whole block of rows. */
void anna_gru_score_step(int64_t rows, int64_t hidden, int64_t t, const int64_t *restrict lengths,
                         const float *restrict bias, int64_t n_codes, const int64_t *restrict codes,
                         const float *restrict tables, int64_t n_x, const float *restrict x,
                         const float *restrict w_x, const float *restrict gh, float *restrict h,
                         float *restrict sum, float *restrict peak, float *restrict last) {
    const int64_t width = 3 * hidden;
    float xi[width];
    for (int64_t b = 0; b < rows; b++) {
        if (t >= lengths[b]) continue;
        for (int64_t j = 0; j < width; j++) xi[j] = bias ? bias[j] : 0.0f;
        for (int64_t f = 0; f < n_codes; f++) {
            const float *restrict row = tables + codes[b * n_codes + f] * width;
            for (int64_t j = 0; j < width; j++) xi[j] += row[j];
        }
        const float *restrict xb = x + b * n_x;
        for (int64_t k = 0; k < n_x; k++) {
            const float v = xb[k], *restrict w = w_x + k * width;
            for (int64_t j = 0; j < width; j++) xi[j] += v * w[j];
        }
        const float *restrict xh = gh + b * width;
        float *restrict hb = h + b * hidden, *restrict sb = sum + b * hidden, *restrict pb = peak + b * hidden;
        for (int64_t j = 0; j < hidden; j++) {
            float r = 1.0f / (1.0f + exp_approx(-(xi[j] + xh[j])));
            float z = 1.0f / (1.0f + exp_approx(-(xi[hidden + j] + xh[hidden + j])));
            float n = 2.0f / (1.0f + exp_approx(-2.0f * (xi[2 * hidden + j] + r * xh[2 * hidden + j]))) - 1.0f;
            float v = n + z * (hb[j] - n);
            hb[j] = v;
            sb[j] += v;
            pb[j] = t == 0 || v > pb[j] ? v : pb[j];
        }
        if (t == lengths[b] - 1) {
            float *restrict lb = last + b * hidden;
            for (int64_t j = 0; j < hidden; j++) lb[j] = hb[j];
        }
    }
}
