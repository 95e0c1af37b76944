// heat-gpu sample: gemm.
//
// SGEMM (single precision, cuBLAS, default math mode: no TF32 or reduced precision) on every
// visible GPU. First a small product is checked against a double-precision reference on the host;
// then a large square product is timed and reported in TFLOPS (2 n^3 floating-point operations
// per product, 1e12 per second). Prints one JSON document; exit status 0 when every GPU computed
// the small product correctly and the timed run completed, 1 otherwise.
//
// Environment: HEAT_GPU_GEMM_N (timed size, default 4096), HEAT_GPU_GEMM_REPS (default 10).
// Build: nvcc -O2 -std=c++17 -arch=sm_XY -o gemm gemm.cu -lcublas

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "sample_common.cuh"

namespace {

constexpr int kCheckN = 97;
constexpr double kCheckTolerance = 1e-4;

// Deterministic values in [-1, 1) from an index, the same on host and device.
__host__ __device__ float pattern(size_t i, unsigned int seed) {
    unsigned int x = static_cast<unsigned int>(i * 2654435761u) ^ seed;
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    return static_cast<float>(x & 0xffffu) / 32768.0f - 1.0f;
}

__global__ void fill(float *m, size_t n, unsigned int seed) {
    for (size_t i = grid_first(); i < n; i += grid_stride()) {
        m[i] = pattern(i, seed);
    }
}

struct Outcome {
    bool correct = false;
    double max_rel_error = 0.0, tflops = 0.0, ms_per_product = 0.0;
    std::string error;
};

std::string cublas_error(const char *step, cublasStatus_t status) {
    return std::string(step) + ": cuBLAS status " + std::to_string(static_cast<int>(status));
}

// C = A * B for n x n column-major matrices already on the device.
cublasStatus_t sgemm(cublasHandle_t handle, int n, const float *a, const float *b, float *c) {
    const float alpha = 1.0f;
    const float beta = 0.0f;
    return cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, n, b, n, &beta, c, n);
}

bool check_small(cublasHandle_t handle, float *a, float *b, float *c, Outcome *out) {
    const int n = kCheckN;
    const size_t elems = static_cast<size_t>(n) * n;
    fill<<<64, 256>>>(a, elems, 11u);
    fill<<<64, 256>>>(b, elems, 23u);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) {
        out->error = cuda_error("fill", err);
        return false;
    }
    const cublasStatus_t status = sgemm(handle, n, a, b, c);
    if (status != CUBLAS_STATUS_SUCCESS) {
        out->error = cublas_error("cublasSgemm (check)", status);
        return false;
    }
    std::vector<float> got(elems);
    err = cudaMemcpy(got.data(), c, elems * sizeof(float), cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) {
        out->error = cuda_error("cudaMemcpy (check)", err);
        return false;
    }
    double worst = 0.0;
    for (int col = 0; col < n; ++col) {
        for (int row = 0; row < n; ++row) {
            double want = 0.0;
            double scale = 0.0;
            for (int k = 0; k < n; ++k) {
                const double term = static_cast<double>(pattern(row + static_cast<size_t>(k) * n, 11u)) *
                                    pattern(k + static_cast<size_t>(col) * n, 23u);
                want += term;
                scale += std::fabs(term);
            }
            const double diff = std::fabs(got[row + static_cast<size_t>(col) * n] - want);
            const double rel = diff / (scale > 0.0 ? scale : 1.0);
            worst = rel > worst ? rel : worst;
        }
    }
    out->max_rel_error = worst;
    out->correct = worst <= kCheckTolerance;
    return true;
}

Outcome run_on(int device, int n, int reps) {
    Outcome out;
    cublasHandle_t handle = nullptr;
    float *a = nullptr, *b = nullptr, *c = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    const size_t elems = static_cast<size_t>(n) * n;
    cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) {
        out.error = cuda_error("cudaSetDevice", err);
        return out;
    }
    cublasStatus_t status = cublasCreate(&handle);
    if (status != CUBLAS_STATUS_SUCCESS) {
        out.error = cublas_error("cublasCreate", status);
        return out;
    }
    status = cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);
    const char *step = "cudaMalloc";
    err = cudaMalloc(&a, elems * sizeof(float));
    if (err == cudaSuccess) { err = cudaMalloc(&b, elems * sizeof(float)); }
    if (err == cudaSuccess) { err = cudaMalloc(&c, elems * sizeof(float)); }
    if (err != cudaSuccess) {
        out.error = cuda_error(step, err);
    } else if (status != CUBLAS_STATUS_SUCCESS) {
        out.error = cublas_error("cublasSetMathMode", status);
    } else if (check_small(handle, a, b, c, &out)) {
        fill<<<1024, 256>>>(a, elems, 3u);
        fill<<<1024, 256>>>(b, elems, 5u);
        status = sgemm(handle, n, a, b, c);  // warm-up: cuBLAS picks and loads its kernel here
        err = cudaDeviceSynchronize();
        if (err == cudaSuccess) { err = cudaEventCreate(&start); }
        if (err == cudaSuccess) { err = cudaEventCreate(&stop); }
        if (err == cudaSuccess) { err = cudaEventRecord(start); }
        for (int r = 0; r < reps && err == cudaSuccess && status == CUBLAS_STATUS_SUCCESS; ++r) {
            status = sgemm(handle, n, a, b, c);
        }
        if (err == cudaSuccess) { err = cudaEventRecord(stop); }
        if (err == cudaSuccess) { err = cudaEventSynchronize(stop); }
        float ms = 0.0f;
        if (err == cudaSuccess) { err = cudaEventElapsedTime(&ms, start, stop); }
        if (status != CUBLAS_STATUS_SUCCESS) {
            out.error = cublas_error("cublasSgemm", status);
        } else if (err != cudaSuccess) {
            out.error = cuda_error("timed SGEMM", err);
        } else if (ms > 0.0f) {
            out.ms_per_product = ms / reps;
            out.tflops = 2.0 * n * static_cast<double>(n) * n * reps / (ms / 1e3) / 1e12;
        }
    }
    release(start, stop, a, b, c);
    cublasDestroy(handle);
    return out;
}

}  // namespace

int main() {
    const int n = env_int("HEAT_GPU_GEMM_N", 4096), reps = env_int("HEAT_GPU_GEMM_REPS", 10);
    return run_each_gpu("gemm", [n, reps](int i, EntryLine &line) {
        const Outcome o = run_on(i, n, reps);
        std::snprintf(line, sizeof(line),
                      "{\"gpu_index\": %d, \"n\": %d, \"repetitions\": %d, \"check_n\": %d, "
                      "\"max_rel_error\": %.3g, \"correct\": %s, \"ms_per_product\": %.3f, "
                      "\"tflops\": %.3f, \"error\": %s}",
                      i, n, reps, kCheckN, o.max_rel_error, o.correct ? "true" : "false",
                      o.ms_per_product, o.tflops, json_string_or_null(o.error).c_str());
        return o.correct && o.error.empty();
    });
}
