// Soft Rasterizer (Liu, Li, Chen, Li, ICCV 2019): the per-pixel ("fine") pass.
//
// Compiled at run time by CuPy (NVRTC) from backend/render/raster_cuda.py; no headers.
// One thread per pixel; each pixel visits only the faces listed for its tile
// (lists built by backend/render/binning.py; the naive mode lists every face in one tile).
// Both kernels take one argument, a SoftRasParams<T> (below) passed by value.
//
// For pixel centre p and face j (d = distance from p to the face's edges):
//   x_j = +d^2/sigma inside, -d^2/sigma outside;  D_j = sigmoid(x_j)
//   a face is skipped where D_j < cutoff, i.e. outside with d^2 >= d2_cutoff
//   alpha = 1 - prod_j (1 - D_j)                      (log-space sum for stability)
//   colour: barycentrics b clamped to >= 0 and renormalised; perspective-correct
//     weights beta_k = (b_k / z_k) / sum_m (b_m / z_m) (beta = b when orthographic),
//     depth zp = 1 / sum_m (b_m / z_m) (sum b_m z_m when orthographic),
//     s_j = (z_far - zp) / (z_far - z_near) / gamma, C_j = sum_k beta_k c_k,
//     I = (sum_j D_j e^(s_j - M) C_j + e^(eps/gamma - M) C_bg) / Z, M = max(eps/gamma, s_j)
//
// Backward (analytic), with g the incoming gradient:
//   dalpha/dx_j = (1 - alpha) D_j
//   dI/dD_j = e^(s_j - M) (C_j - I) / Z,  dI/ds_j = w_j (C_j - I),  dI/dC_j = w_j,
//   w_j = D_j e^(s_j - M) / Z;  then through zp, beta and b to the corners.

#ifndef SOFTRAS_EMULATION
#define SOFTRAS_GLOBAL extern "C" __global__
#endif

// 64-bit offsets into (B, F, ...) and (B, H, W, ...) arrays (NVRTC has no <cstddef>).
typedef long long index_t;

// The kernels' whole interface, for B cameras, F faces and images H x W (row 0 at
// the top); every array is contiguous. Mirrored field for field by PARAMS_FIELDS in
// backend/render/raster_cuda.py; tests/test_kernels.py checks that the layouts agree.
template <typename T>
struct SoftRasParams {
    // Inputs.
    const T* face_screen;               // (B, F, 3, 3) per corner: pixel u, pixel v, depth z > 0
    const T* face_colors;               // (B, F, 3, 3) per corner RGB; unused if channels == 1
    const unsigned char* orthographic;  // (B,) 1 for orthographic cameras (linear interpolation)
    const int* tile_offsets;            // (B * tiles + 1,) and (L,): the faces of tile t of
    const int* tile_faces;              //   camera b are tile_faces[tile_offsets[b*tiles+t] .. +1)
    // Written by the forward pass, read by the backward pass.
    T* rgba;                            // (B, H, W, channels)
    T* aux;                             // (B, H, W, 2) softmax maximum M and normaliser Z
    // Backward pass only (null in the forward pass).
    const T* grad_rgba;                 // (B, H, W, channels) incoming gradient
    T* grad_screen;                     // (B, F, 3, 3) zero-initialised, accumulated into
    T* grad_colors;                     // (B, F, 3, 3) likewise
    T sigma, d2_cutoff, gamma, eps, z_near, z_far;
    T background[3];                    // RGB
    int face_count, height, width;      // F, H, W
    int tile, tiles_x, tiles;           // tile edge in pixels, tiles per row, tiles per camera
    int channels;                       // 4 (RGBA) or 1 (alpha only)
};

// Edge function E(a, b, p): twice the signed area of triangle (a, b, p).
template <typename T>
__device__ __forceinline__ T edge_function(T ax, T ay, T bx, T by, T px, T py) {
    return (bx - ax) * (py - ay) - (by - ay) * (px - ax);
}

// Squared distance from p to segment ab; *t_out receives the closest point's parameter.
template <typename T>
__device__ __forceinline__ T segment_distance2(T px, T py, T ax, T ay, T bx, T by, T* t_out) {
    const T sx = bx - ax, sy = by - ay;
    const T rx = px - ax, ry = py - ay;
    const T length2 = sx * sx + sy * sy;
    T t = length2 > T(1e-20) ? (rx * sx + ry * sy) / length2 : T(0);
    t = t < T(0) ? T(0) : (t > T(1) ? T(1) : t);
    const T dx = rx - t * sx, dy = ry - t * sy;
    *t_out = t;
    return dx * dx + dy * dy;
}

// Everything the forward and backward passes need about one face at one pixel.
template <typename T>
struct FaceSample {
    T x[3], y[3], z[3];   // corners: pixel u, pixel v, view depth
    T edge[3];            // E of the edge opposite each corner; sum = twice the area
    T area2;
    bool inside;
    T d2;                 // squared distance to the closest edge
    int closest_edge;     // that edge runs from corner k to corner (k + 1) % 3
    T closest_t;
};

// Loads face f's corners and measures pixel (px, py) against it. Returns false
// when the face is culled there (D < cutoff).
template <typename T>
__device__ __forceinline__ bool sample_face(const T* corners, T px, T py, T d2_cutoff,
                                            FaceSample<T>* s) {
    for (int k = 0; k < 3; ++k) {
        s->x[k] = corners[3 * k + 0];
        s->y[k] = corners[3 * k + 1];
        s->z[k] = corners[3 * k + 2];
    }
    s->edge[0] = edge_function(s->x[1], s->y[1], s->x[2], s->y[2], px, py);
    s->edge[1] = edge_function(s->x[2], s->y[2], s->x[0], s->y[0], px, py);
    s->edge[2] = edge_function(s->x[0], s->y[0], s->x[1], s->y[1], px, py);
    s->area2 = s->edge[0] + s->edge[1] + s->edge[2];
    s->inside = s->edge[0] * s->area2 > T(0) && s->edge[1] * s->area2 > T(0) &&
                s->edge[2] * s->area2 > T(0);
    s->d2 = T(0);
    s->closest_edge = 0;
    s->closest_t = T(0);
    for (int k = 0; k < 3; ++k) {
        const int n = (k + 1) % 3;
        T t;
        const T d2 = segment_distance2(px, py, s->x[k], s->y[k], s->x[n], s->y[n], &t);
        if (k == 0 || d2 < s->d2) {
            s->d2 = d2;
            s->closest_edge = k;
            s->closest_t = t;
        }
    }
    return s->inside || s->d2 < d2_cutoff;
}

// Clamped, renormalised barycentrics b, perspective-correct weights beta,
// and the interpolated view depth. Returns sum_m b_m / z_m (perspective) or 1.
template <typename T>
__device__ __forceinline__ T interpolate(const FaceSample<T>& s, bool ortho, T b[3], T beta[3],
                                         T* depth) {
    T total = T(0);
    for (int k = 0; k < 3; ++k) {
        const T w = s.edge[k] / s.area2;
        b[k] = w > T(0) ? w : T(0);
        total += b[k];
    }
    for (int k = 0; k < 3; ++k) b[k] /= total;
    if (ortho) {
        *depth = b[0] * s.z[0] + b[1] * s.z[1] + b[2] * s.z[2];
        for (int k = 0; k < 3; ++k) beta[k] = b[k];
        return T(1);
    }
    T inv_depth = T(0);
    for (int k = 0; k < 3; ++k) {
        beta[k] = b[k] / s.z[k];
        inv_depth += beta[k];
    }
    for (int k = 0; k < 3; ++k) beta[k] /= inv_depth;
    *depth = T(1) / inv_depth;
    return inv_depth;
}

template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
    return T(1) / (T(1) + exp(-x));
}

// log(1 - sigmoid(x)) = -softplus(x), computed without overflow.
template <typename T>
__device__ __forceinline__ T log_one_minus_sigmoid(T x) {
    return -(fmax(x, T(0)) + log1p(exp(-fabs(x))));
}

// The pixel a thread shades: its column and row, camera, centre, flat index into
// (B, H, W, ...) images, and the index of its tile's face list.
template <typename T>
struct ThreadPixel {
    int x, y, camera;
    T cx, cy;
    index_t index;
    int list;
};

// Fills *p for this thread; false for a thread past the image's edge.
template <typename T>
__device__ __forceinline__ bool locate_pixel(const SoftRasParams<T>& params, ThreadPixel<T>* p) {
    p->x = blockIdx.x * blockDim.x + threadIdx.x;
    p->y = blockIdx.y * blockDim.y + threadIdx.y;
    p->camera = blockIdx.z;
    if (p->x >= params.width || p->y >= params.height) return false;
    p->cx = T(p->x) + T(0.5);
    p->cy = T(p->y) + T(0.5);
    p->index = (index_t(p->camera) * params.height + p->y) * params.width + p->x;
    p->list = p->camera * params.tiles + (p->y / params.tile) * params.tiles_x + p->x / params.tile;
    return true;
}

// Forward pass: writes rgba and aux.
template <typename T>
__device__ __forceinline__ void soft_raster_forward_impl(const SoftRasParams<T>& params) {
    ThreadPixel<T> p;
    if (!locate_pixel(params, &p)) return;
    const bool with_color = params.channels == 4;
    const bool ortho = params.orthographic[p.camera] != 0;
    const T gamma = params.gamma, z_near = params.z_near, z_far = params.z_far;

    T log_transparency = T(0);
    T peak = params.eps / gamma, total = T(1);  // the background's weight is e^(eps/gamma - M)
    T numerator[3] = {params.background[0], params.background[1], params.background[2]};

    for (int i = params.tile_offsets[p.list]; i < params.tile_offsets[p.list + 1]; ++i) {
        const index_t face = index_t(p.camera) * params.face_count + params.tile_faces[i];
        FaceSample<T> s;
        if (!sample_face(params.face_screen + 9 * face, p.cx, p.cy, params.d2_cutoff, &s)) continue;
        const T x = (s.inside ? s.d2 : -s.d2) / params.sigma;
        log_transparency += log_one_minus_sigmoid(x);
        if (!with_color) continue;

        T b[3], beta[3], depth;
        interpolate(s, ortho, b, beta, &depth);
        const T score = (z_far - depth) / (z_far - z_near) / gamma;
        const T* c = params.face_colors + 9 * face;
        if (score > peak) {
            const T scale = exp(peak - score);
            total *= scale;
            for (int ch = 0; ch < 3; ++ch) numerator[ch] *= scale;
            peak = score;
        }
        const T weight = sigmoid(x) * exp(score - peak);
        total += weight;
        for (int ch = 0; ch < 3; ++ch)
            numerator[ch] += weight * (beta[0] * c[ch] + beta[1] * c[3 + ch] + beta[2] * c[6 + ch]);
    }

    const T alpha = -expm1(log_transparency);
    if (!with_color) {
        params.rgba[p.index] = alpha;
        return;
    }
    for (int ch = 0; ch < 3; ++ch) params.rgba[4 * p.index + ch] = numerator[ch] / total;
    params.rgba[4 * p.index + 3] = alpha;
    params.aux[2 * p.index + 0] = peak;
    params.aux[2 * p.index + 1] = total;
}

// Backward pass: accumulates into grad_screen and grad_colors the gradients of
// sum(grad_rgba * rgba), reading the forward pass's rgba and aux.
template <typename T>
__device__ __forceinline__ void soft_raster_backward_impl(const SoftRasParams<T>& params) {
    ThreadPixel<T> p;
    if (!locate_pixel(params, &p)) return;
    const int channels = params.channels;
    const bool with_color = channels == 4;
    const bool ortho = params.orthographic[p.camera] != 0;
    const T sigma = params.sigma, gamma = params.gamma;
    const T z_near = params.z_near, z_far = params.z_far;
    const T *rgba = params.rgba, *aux = params.aux, *grad_rgba = params.grad_rgba;

    const T alpha = rgba[channels * p.index + channels - 1];
    const T grad_alpha = grad_rgba[channels * p.index + channels - 1];
    T color[3] = {T(0), T(0), T(0)}, grad_color[3] = {T(0), T(0), T(0)};
    T peak = T(0), total = T(1);
    if (with_color) {
        for (int ch = 0; ch < 3; ++ch) {
            color[ch] = rgba[4 * p.index + ch];
            grad_color[ch] = grad_rgba[4 * p.index + ch];
        }
        peak = aux[2 * p.index + 0];
        total = aux[2 * p.index + 1];
    }
    const bool any_color_grad = with_color &&
        (grad_color[0] != T(0) || grad_color[1] != T(0) || grad_color[2] != T(0));
    if (grad_alpha == T(0) && !any_color_grad) return;

    for (int i = params.tile_offsets[p.list]; i < params.tile_offsets[p.list + 1]; ++i) {
        const index_t face = index_t(p.camera) * params.face_count + params.tile_faces[i];
        FaceSample<T> s;
        if (!sample_face(params.face_screen + 9 * face, p.cx, p.cy, params.d2_cutoff, &s)) continue;
        const T x = (s.inside ? s.d2 : -s.d2) / sigma;
        const T prob = sigmoid(x);
        T grad_x = grad_alpha * (T(1) - alpha) * prob;  // d alpha / d x_j = (1 - alpha) D_j

        T grad_corner[3][3] = {{T(0), T(0), T(0)}, {T(0), T(0), T(0)}, {T(0), T(0), T(0)}};
        if (any_color_grad) {
            T b[3], beta[3], depth;
            const T inv_depth = interpolate(s, ortho, b, beta, &depth);
            const T score = (z_far - depth) / (z_far - z_near) / gamma;
            const T* c = params.face_colors + 9 * face;
            T face_color[3], along = T(0);
            for (int ch = 0; ch < 3; ++ch) {
                face_color[ch] = beta[0] * c[ch] + beta[1] * c[3 + ch] + beta[2] * c[6 + ch];
                along += grad_color[ch] * (face_color[ch] - color[ch]);
            }
            const T softmax_exp = exp(score - peak);
            const T weight = prob * softmax_exp / total;
            grad_x += softmax_exp * along / total * prob * (T(1) - prob);
            const T grad_depth = -weight * along / gamma / (z_far - z_near);

            // Colours: dI/dc_k = w_j beta_k.
            T grad_beta[3];
            for (int k = 0; k < 3; ++k) {
                grad_beta[k] = T(0);
                for (int ch = 0; ch < 3; ++ch) {
                    const T g = weight * grad_color[ch];
                    atomicAdd(params.grad_colors + 9 * face + 3 * k + ch, beta[k] * g);
                    grad_beta[k] += g * c[3 * k + ch];
                }
            }
            // Through beta and the depth to b and the corner depths z_k.
            T grad_b[3];
            if (ortho) {
                for (int k = 0; k < 3; ++k) {
                    grad_b[k] = grad_beta[k] + grad_depth * s.z[k];
                    grad_corner[k][2] += grad_depth * b[k];
                }
            } else {
                const T mean = grad_beta[0] * beta[0] + grad_beta[1] * beta[1] +
                               grad_beta[2] * beta[2];
                for (int k = 0; k < 3; ++k) {
                    // u_k = b_k / z_k, beta_k = u_k / S, depth = 1 / S, S = sum u.
                    const T grad_u = (grad_beta[k] - mean) / inv_depth -
                                     grad_depth / (inv_depth * inv_depth);
                    grad_b[k] = grad_u / s.z[k];
                    grad_corner[k][2] += -grad_u * b[k] / (s.z[k] * s.z[k]);
                }
            }
            // Through the clamp-and-renormalise to the raw barycentrics w_k = E_k / A.
            T raw[3], raw_sum = T(0);
            for (int k = 0; k < 3; ++k) {
                raw[k] = s.edge[k] / s.area2;
                raw_sum += raw[k] > T(0) ? raw[k] : T(0);
            }
            const T mean_b = grad_b[0] * b[0] + grad_b[1] * b[1] + grad_b[2] * b[2];
            T grad_edge[3], grad_area = T(0);
            for (int k = 0; k < 3; ++k) {
                const T grad_raw = raw[k] > T(0) ? (grad_b[k] - mean_b) / raw_sum : T(0);
                grad_edge[k] = grad_raw / s.area2;
                grad_area -= grad_raw * raw[k] / s.area2;
            }
            // E_k = E(corner k+1, corner k+2, p); dE(a, b, p)/da = (b.y - p.y, p.x - b.x),
            // dE/db = (p.y - a.y, a.x - p.x). The area A = E(v0, v1, v2) adds to all three.
            for (int k = 0; k < 3; ++k) {
                const int a = (k + 1) % 3, e = (k + 2) % 3;
                grad_corner[a][0] += grad_edge[k] * (s.y[e] - p.cy);
                grad_corner[a][1] += grad_edge[k] * (p.cx - s.x[e]);
                grad_corner[e][0] += grad_edge[k] * (p.cy - s.y[a]);
                grad_corner[e][1] += grad_edge[k] * (s.x[a] - p.cx);
                // dA/dv_k = (y_{k+1} - y_{k+2}, x_{k+2} - x_{k+1})
                grad_corner[k][0] += grad_area * (s.y[a] - s.y[e]);
                grad_corner[k][1] += grad_area * (s.x[e] - s.x[a]);
            }
        }

        // Through x = +-d^2 / sigma to the closest edge's end points:
        // d^2 = |p - q|^2, q = a + t (b - a)  =>  dd^2/da = -2 (p - q)(1 - t),
        // dd^2/db = -2 (p - q) t.
        const T grad_d2 = (s.inside ? grad_x : -grad_x) / sigma;
        const int a = s.closest_edge, e = (s.closest_edge + 1) % 3;
        const T t = s.closest_t;
        const T qx = s.x[a] + t * (s.x[e] - s.x[a]), qy = s.y[a] + t * (s.y[e] - s.y[a]);
        const T dx = p.cx - qx, dy = p.cy - qy;
        grad_corner[a][0] += -T(2) * dx * (T(1) - t) * grad_d2;
        grad_corner[a][1] += -T(2) * dy * (T(1) - t) * grad_d2;
        grad_corner[e][0] += -T(2) * dx * t * grad_d2;
        grad_corner[e][1] += -T(2) * dy * t * grad_d2;

        for (int k = 0; k < 3; ++k)
            for (int j = 0; j < 3; ++j)
                if (grad_corner[k][j] != T(0))
                    atomicAdd(params.grad_screen + 9 * face + 3 * k + j, grad_corner[k][j]);
    }
}

// Entry points, one per scalar type (C linkage keeps the names plain for CuPy).
SOFTRAS_GLOBAL void soft_raster_forward_f32(const SoftRasParams<float> params) {
    soft_raster_forward_impl(params);
}

SOFTRAS_GLOBAL void soft_raster_forward_f64(const SoftRasParams<double> params) {
    soft_raster_forward_impl(params);
}

SOFTRAS_GLOBAL void soft_raster_backward_f32(const SoftRasParams<float> params) {
    soft_raster_backward_impl(params);
}

SOFTRAS_GLOBAL void soft_raster_backward_f64(const SoftRasParams<double> params) {
    soft_raster_backward_impl(params);
}
