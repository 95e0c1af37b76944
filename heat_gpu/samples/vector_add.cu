// heat-gpu sample: vector_add.
//
// Adds two float vectors on every visible GPU and compares each element with the sum computed on
// the host (a single IEEE float addition, so the results must be identical). Prints one JSON
// document; exit status 0 when every GPU got every element right, 1 otherwise.
//
// Environment: HEAT_GPU_VECTOR_ELEMENTS (default 16777216).
// Build: nvcc -O2 -std=c++17 -arch=sm_XY -o vector_add vector_add.cu

#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "sample_common.cuh"

namespace {

__global__ void add(const float *a, const float *b, float *c, size_t n) {
    for (size_t i = grid_first(); i < n; i += grid_stride()) {
        c[i] = a[i] + b[i];
    }
}

struct Outcome {
    bool ok = false;
    size_t mismatches = 0;
    double max_abs_error = 0.0;
    float kernel_ms = 0.0f;
    std::string error;
};

Outcome run_on(int device, size_t n) {
    Outcome out;
    std::vector<float> a(n), b(n), c(n);
    for (size_t i = 0; i < n; ++i) {
        a[i] = static_cast<float>(i % 65536) * 0.5f;
        b[i] = static_cast<float>((n - i) % 4096) * 0.25f + 1.0f;
    }
    float *da = nullptr, *db = nullptr, *dc = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    const size_t bytes = n * sizeof(float);
    cudaError_t err = cudaSetDevice(device);
    const char *step = "cudaSetDevice";
    if (err == cudaSuccess) { step = "cudaMalloc"; err = cudaMalloc(&da, bytes); }
    if (err == cudaSuccess) { err = cudaMalloc(&db, bytes); }
    if (err == cudaSuccess) { err = cudaMalloc(&dc, bytes); }
    if (err == cudaSuccess) { step = "cudaMemcpy H2D"; err = cudaMemcpy(da, a.data(), bytes, cudaMemcpyHostToDevice); }
    if (err == cudaSuccess) { err = cudaMemcpy(db, b.data(), bytes, cudaMemcpyHostToDevice); }
    if (err == cudaSuccess) { step = "cudaEventCreate"; err = cudaEventCreate(&start); }
    if (err == cudaSuccess) { err = cudaEventCreate(&stop); }
    if (err == cudaSuccess) {
        step = "kernel launch";
        cudaEventRecord(start);
        add<<<1024, 256>>>(da, db, dc, n);
        err = cudaGetLastError();
        cudaEventRecord(stop);
    }
    if (err == cudaSuccess) { step = "kernel"; err = cudaEventSynchronize(stop); }
    if (err == cudaSuccess) { cudaEventElapsedTime(&out.kernel_ms, start, stop); }
    if (err == cudaSuccess) { step = "cudaMemcpy D2H"; err = cudaMemcpy(c.data(), dc, bytes, cudaMemcpyDeviceToHost); }
    if (err == cudaSuccess) {
        for (size_t i = 0; i < n; ++i) {
            const double diff = std::fabs(static_cast<double>(c[i]) - static_cast<double>(a[i] + b[i]));
            if (diff != 0.0) {
                ++out.mismatches;
            }
            if (diff > out.max_abs_error) {
                out.max_abs_error = diff;
            }
        }
        out.ok = out.mismatches == 0;
    } else {
        out.error = cuda_error(step, err);
    }
    release(start, stop, da, db, dc);
    return out;
}

}  // namespace

int main() {
    const size_t n = static_cast<size_t>(env_long("HEAT_GPU_VECTOR_ELEMENTS", 1L << 24));
    return run_each_gpu("vector_add", [n](int i, EntryLine &line) {
        const Outcome o = run_on(i, n);
        std::snprintf(line, sizeof(line),
                      "{\"gpu_index\": %d, \"elements\": %zu, \"mismatches\": %zu, "
                      "\"max_abs_error\": %.9g, \"kernel_ms\": %.3f, \"correct\": %s, \"error\": %s}",
                      i, n, o.mismatches, o.max_abs_error, o.kernel_ms, o.ok ? "true" : "false",
                      json_string_or_null(o.error).c_str());
        return o.ok;
    });
}
