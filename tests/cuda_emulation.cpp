// Runs kernels/soft_raster.cu on the CPU, for tests on machines without a GPU.
//
// The kernels use one thread per pixel, no shared memory and no synchronisation,
// so running every (block, thread) of the grid one after another is a valid
// schedule of the same program; atomicAdd becomes a plain add. Built by
// tests/cuda_emulation.py and called through ctypes with a pointer to the kernel's
// SoftRasParams (the same bytes CuPy hands to the GPU by value).
#include <cmath>
#include <cstddef>

using std::exp;
using std::expm1;
using std::fabs;
using std::fmax;
using std::log1p;

namespace {
struct Dim3 {
    unsigned x, y, z;
};
Dim3 blockIdx, threadIdx, blockDim;

template <typename T>
T atomicAdd(T* address, T value) {
    const T old = *address;
    *address += value;
    return old;
}
}  // namespace

#define __device__
#define __forceinline__ inline
#define SOFTRAS_EMULATION
#define SOFTRAS_GLOBAL static
#include "../kernels/soft_raster.cu"

// Runs kernel for every (block, thread) of the grid; launch: grid x, y, z and block x, y.
template <typename T>
void emulate_grid(const unsigned* launch, void (*kernel)(SoftRasParams<T>),
                  const SoftRasParams<T>& params) {
    blockDim = {launch[3], launch[4], 1};
    for (blockIdx.z = 0; blockIdx.z < launch[2]; ++blockIdx.z)
        for (blockIdx.y = 0; blockIdx.y < launch[1]; ++blockIdx.y)
            for (blockIdx.x = 0; blockIdx.x < launch[0]; ++blockIdx.x)
                for (threadIdx.y = 0; threadIdx.y < blockDim.y; ++threadIdx.y)
                    for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x)
                        kernel(params);
}

extern "C" {
void emulate_soft_raster_forward_f32(const unsigned* launch, const SoftRasParams<float>* params) {
    emulate_grid(launch, soft_raster_forward_f32, *params);
}
void emulate_soft_raster_forward_f64(const unsigned* launch, const SoftRasParams<double>* params) {
    emulate_grid(launch, soft_raster_forward_f64, *params);
}
void emulate_soft_raster_backward_f32(const unsigned* launch, const SoftRasParams<float>* params) {
    emulate_grid(launch, soft_raster_backward_f32, *params);
}
void emulate_soft_raster_backward_f64(const unsigned* launch,
                                      const SoftRasParams<double>* params) {
    emulate_grid(launch, soft_raster_backward_f64, *params);
}
}
