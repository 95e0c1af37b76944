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
#include <cstdlib>
#include <string>
#include <vector>

namespace {

std::string json_string(const std::string &text) {
    std::string out = "\"";
    for (const char ch : text) {
        const unsigned char c = static_cast<unsigned char>(ch);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += ch;
        } else if (c < 0x20) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", c);
            out += buf;
        } else {
            out += ch;
        }
    }
    return out + "\"";
}

std::string cuda_error(const char *what, cudaError_t err) {
    return std::string(what) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err);
}

long env_long(const char *name, long fallback) {
    const char *text = std::getenv(name);
    if (text == nullptr || *text == '\0') {
        return fallback;
    }
    const long value = std::strtol(text, nullptr, 10);
    return value > 0 ? value : fallback;
}

__global__ void add(const float *a, const float *b, float *c, size_t n) {
    const size_t stride = static_cast<size_t>(blockDim.x) * gridDim.x;
    for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n; i += stride) {
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
    if (start != nullptr) { cudaEventDestroy(start); }
    if (stop != nullptr) { cudaEventDestroy(stop); }
    cudaFree(da);
    cudaFree(db);
    cudaFree(dc);
    return out;
}

}  // namespace

int main() {
    const size_t n = static_cast<size_t>(env_long("HEAT_GPU_VECTOR_ELEMENTS", 1L << 24));
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        const std::string why = err != cudaSuccess ? cuda_error("cudaGetDeviceCount", err)
                                                   : std::string("no CUDA device visible");
        std::printf("{\"program\": \"vector_add\", \"error\": %s, \"results\": []}\n",
                    json_string(why).c_str());
        return 1;
    }
    int failures = 0;
    std::string results;
    for (int i = 0; i < count; ++i) {
        const Outcome o = run_on(i, n);
        char line[1024];
        std::snprintf(line, sizeof(line),
                      "%s{\"gpu_index\": %d, \"elements\": %zu, \"mismatches\": %zu, "
                      "\"max_abs_error\": %.9g, \"kernel_ms\": %.3f, \"correct\": %s, \"error\": %s}",
                      i == 0 ? "" : ", ", i, n, o.mismatches, o.max_abs_error, o.kernel_ms,
                      o.ok ? "true" : "false",
                      o.error.empty() ? "null" : json_string(o.error).c_str());
        results += line;
        failures += o.ok ? 0 : 1;
    }
    std::printf("{\"program\": \"vector_add\", \"error\": null, \"results\": [%s]}\n",
                results.c_str());
    return failures == 0 ? 0 : 1;
}
