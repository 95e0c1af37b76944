// heat-gpu sample: bandwidth.
//
// Measures copy bandwidth on every visible GPU with pinned host memory: host to device (H2D),
// device to host (D2H) and device to device (D2D), in GB/s (1e9 bytes per second). A D2D copy
// reads and writes every byte, so D2D counts both (the figure comparable with the memory's peak
// bandwidth). Prints one JSON document; exit status 0 when every copy ran, 1 otherwise.
//
// Environment: HEAT_GPU_BANDWIDTH_MIB (bytes per copy, default 64), HEAT_GPU_BANDWIDTH_REPS
// (timed copies per direction, default 20).
// Build: nvcc -O2 -std=c++17 -arch=sm_XY -o bandwidth bandwidth.cu

#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "sample_common.cuh"

namespace {

// Times `reps` copies of `bytes` after one untimed warm-up copy; returns GB/s of `factor` x bytes.
cudaError_t timed_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, int reps,
                       double factor, cudaStream_t stream, double *gbps) {
    cudaEvent_t start = nullptr, stop = nullptr;
    cudaError_t err = cudaMemcpyAsync(dst, src, bytes, kind, stream);
    if (err == cudaSuccess) { err = cudaStreamSynchronize(stream); }
    if (err == cudaSuccess) { err = cudaEventCreate(&start); }
    if (err == cudaSuccess) { err = cudaEventCreate(&stop); }
    if (err == cudaSuccess) { err = cudaEventRecord(start, stream); }
    for (int r = 0; r < reps && err == cudaSuccess; ++r) {
        err = cudaMemcpyAsync(dst, src, bytes, kind, stream);
    }
    if (err == cudaSuccess) { err = cudaEventRecord(stop, stream); }
    if (err == cudaSuccess) { err = cudaEventSynchronize(stop); }
    float ms = 0.0f;
    if (err == cudaSuccess) { err = cudaEventElapsedTime(&ms, start, stop); }
    if (err == cudaSuccess) {
        *gbps = ms > 0.0f ? factor * bytes * reps / (ms / 1e3) / 1e9 : 0.0;
    }
    release(start, stop);
    return err;
}

struct Outcome {
    double h2d = 0.0, d2h = 0.0, d2d = 0.0;
    std::string error;
};

Outcome run_on(int device, size_t bytes, int reps) {
    Outcome out;
    void *host = nullptr, *dev_a = nullptr, *dev_b = nullptr;
    cudaStream_t stream = nullptr;
    const char *step = "cudaSetDevice";
    cudaError_t err = cudaSetDevice(device);
    if (err == cudaSuccess) { step = "cudaMallocHost"; err = cudaMallocHost(&host, bytes); }
    if (err == cudaSuccess) { std::memset(host, 0x5a, bytes); step = "cudaMalloc"; err = cudaMalloc(&dev_a, bytes); }
    if (err == cudaSuccess) { err = cudaMalloc(&dev_b, bytes); }
    if (err == cudaSuccess) { step = "cudaStreamCreate"; err = cudaStreamCreate(&stream); }
    if (err == cudaSuccess) { step = "H2D copy"; err = timed_copy(dev_a, host, bytes, cudaMemcpyHostToDevice, reps, 1.0, stream, &out.h2d); }
    if (err == cudaSuccess) { step = "D2H copy"; err = timed_copy(host, dev_a, bytes, cudaMemcpyDeviceToHost, reps, 1.0, stream, &out.d2h); }
    if (err == cudaSuccess) { step = "D2D copy"; err = timed_copy(dev_b, dev_a, bytes, cudaMemcpyDeviceToDevice, reps, 2.0, stream, &out.d2d); }
    if (err != cudaSuccess) {
        out.error = cuda_error(step, err);
    }
    release(stream, dev_a, dev_b);
    cudaFreeHost(host);
    return out;
}

}  // namespace

int main() {
    const size_t bytes = env_mib("HEAT_GPU_BANDWIDTH_MIB", 64);
    const int reps = env_int("HEAT_GPU_BANDWIDTH_REPS", 20);
    return run_each_gpu("bandwidth", [bytes, reps](int i, EntryLine &line) {
        const Outcome o = run_on(i, bytes, reps);
        std::snprintf(line, sizeof(line),
                      "{\"gpu_index\": %d, \"bytes\": %zu, \"repetitions\": %d, \"pinned\": true, "
                      "\"h2d_gbps\": %.2f, \"d2h_gbps\": %.2f, \"d2d_gbps\": %.2f, \"error\": %s}",
                      i, bytes, reps, o.h2d, o.d2h, o.d2d, json_string_or_null(o.error).c_str());
        return o.error.empty();
    });
}
