// Runs kernels/soft_raster.cu on the CPU, for tests on machines without a GPU.
//
// The kernels use one thread per pixel, no shared memory and no synchronisation,
// so running every (block, thread) of the grid one after another is a valid
// schedule of the same program; atomicAdd becomes a plain add. Built by
// tests/cuda_emulation.py and called through ctypes.
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

// launch: grid x, y, z and block x, y.
#define EMULATE_GRID(launch, call)                                                 \
    blockDim = {launch[3], launch[4], 1};                                          \
    for (blockIdx.z = 0; blockIdx.z < launch[2]; ++blockIdx.z)                     \
        for (blockIdx.y = 0; blockIdx.y < launch[1]; ++blockIdx.y)                 \
            for (blockIdx.x = 0; blockIdx.x < launch[0]; ++blockIdx.x)             \
                for (threadIdx.y = 0; threadIdx.y < blockDim.y; ++threadIdx.y)     \
                    for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x) \
                        call;

extern "C" {
void emulate_soft_raster_forward_f32(const unsigned* launch, SOFTRAS_FORWARD_ARGS(float)) {
    EMULATE_GRID(launch, soft_raster_forward_f32(SOFTRAS_FORWARD_NAMES))
}
void emulate_soft_raster_forward_f64(const unsigned* launch, SOFTRAS_FORWARD_ARGS(double)) {
    EMULATE_GRID(launch, soft_raster_forward_f64(SOFTRAS_FORWARD_NAMES))
}
void emulate_soft_raster_backward_f32(const unsigned* launch, SOFTRAS_BACKWARD_ARGS(float)) {
    EMULATE_GRID(launch, soft_raster_backward_f32(SOFTRAS_BACKWARD_NAMES))
}
void emulate_soft_raster_backward_f64(const unsigned* launch, SOFTRAS_BACKWARD_ARGS(double)) {
    EMULATE_GRID(launch, soft_raster_backward_f64(SOFTRAS_BACKWARD_NAMES))
}
}
