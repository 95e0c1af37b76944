// heat-gpu sample: p2p.
//
// Peer-to-peer copy bandwidth between every ordered pair of visible GPUs, in GB/s. Peer access is
// enabled where the driver allows it (NVLink or PCIe peer-to-peer); elsewhere the copy still runs,
// staged through host memory, and the pair reports "peer_access": false. With fewer than two GPUs
// the program reports "status": "skipped". Prints one JSON document; exit status 0 when every
// copy ran (or the test was skipped), 1 otherwise.
//
// Environment: HEAT_GPU_P2P_MIB (bytes per copy, default 64), HEAT_GPU_P2P_REPS (default 10).
// Build: nvcc -O2 -std=c++17 -arch=sm_XY -o p2p p2p.cu

#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "sample_common.cuh"

namespace {

struct Outcome {
    bool peer_access = false;
    double gbps = 0.0;
    std::string error;
};

Outcome copy_pair(int src, int dst, const std::vector<void *> &bufs, size_t bytes, int reps) {
    Outcome out;
    int can = 0;
    cudaError_t err = cudaDeviceCanAccessPeer(&can, src, dst);
    const char *step = "cudaDeviceCanAccessPeer";
    if (err == cudaSuccess && can) {
        step = "cudaDeviceEnablePeerAccess";
        err = cudaSetDevice(src);
        if (err == cudaSuccess) {
            err = cudaDeviceEnablePeerAccess(dst, 0);
            if (err == cudaErrorPeerAccessAlreadyEnabled) {
                cudaGetLastError();
                err = cudaSuccess;
            }
        }
        out.peer_access = err == cudaSuccess;
    }
    cudaStream_t stream = nullptr;
    cudaEvent_t start = nullptr, stop = nullptr;
    if (err == cudaSuccess) { step = "cudaSetDevice"; err = cudaSetDevice(src); }
    if (err == cudaSuccess) { step = "cudaStreamCreate"; err = cudaStreamCreate(&stream); }
    if (err == cudaSuccess) { step = "cudaEventCreate"; err = cudaEventCreate(&start); }
    if (err == cudaSuccess) { err = cudaEventCreate(&stop); }
    if (err == cudaSuccess) {
        step = "cudaMemcpyPeerAsync";
        err = cudaMemcpyPeerAsync(bufs[dst], dst, bufs[src], src, bytes, stream);
    }
    if (err == cudaSuccess) { err = cudaStreamSynchronize(stream); }
    if (err == cudaSuccess) { err = cudaEventRecord(start, stream); }
    for (int r = 0; r < reps && err == cudaSuccess; ++r) {
        err = cudaMemcpyPeerAsync(bufs[dst], dst, bufs[src], src, bytes, stream);
    }
    if (err == cudaSuccess) { err = cudaEventRecord(stop, stream); }
    if (err == cudaSuccess) { err = cudaEventSynchronize(stop); }
    float ms = 0.0f;
    if (err == cudaSuccess) { err = cudaEventElapsedTime(&ms, start, stop); }
    if (err == cudaSuccess && ms > 0.0f) {
        out.gbps = static_cast<double>(bytes) * reps / (ms / 1e3) / 1e9;
    }
    if (err != cudaSuccess) {
        out.error = cuda_error(step, err);
    }
    release(start, stop, stream);
    if (out.peer_access) {
        cudaSetDevice(src);
        cudaDeviceDisablePeerAccess(dst);
    }
    return out;
}

}  // namespace

int main() {
    std::string why;
    const int count = visible_devices(&why);
    if (count == 0) {
        std::printf("{\"program\": \"p2p\", \"status\": \"error\", \"gpu_count\": 0, "
                    "\"error\": %s, \"results\": []}\n", json_string(why).c_str());
        return 1;
    }
    if (count < 2) {
        std::printf("{\"program\": \"p2p\", \"status\": \"skipped\", \"gpu_count\": %d, "
                    "\"error\": null, \"reason\": \"%d GPU visible; peer-to-peer needs at least 2\", "
                    "\"results\": []}\n", count, count);
        return 0;
    }
    const size_t bytes = env_mib("HEAT_GPU_P2P_MIB", 64);
    const int reps = env_int("HEAT_GPU_P2P_REPS", 10);
    std::vector<void *> bufs(count, nullptr);
    std::string setup_error;
    for (int i = 0; i < count && setup_error.empty(); ++i) {
        cudaError_t err = cudaSetDevice(i);
        if (err == cudaSuccess) { err = cudaMalloc(&bufs[i], bytes); }
        if (err != cudaSuccess) {
            setup_error = cuda_error("cudaMalloc", err) + " on GPU " + std::to_string(i);
        }
    }
    int failures = 0;
    std::string results;
    for (int src = 0; src < count && setup_error.empty(); ++src) {
        for (int dst = 0; dst < count; ++dst) {
            if (src == dst) {
                continue;
            }
            const Outcome o = copy_pair(src, dst, bufs, bytes, reps);
            char line[1024];
            std::snprintf(line, sizeof(line),
                          "%s{\"gpu_index\": %d, \"peer_index\": %d, \"peer_access\": %s, "
                          "\"bytes\": %zu, \"repetitions\": %d, \"gbps\": %.2f, \"error\": %s}",
                          results.empty() ? "" : ", ", src, dst,
                          o.peer_access ? "true" : "false", bytes, reps, o.gbps,
                          json_string_or_null(o.error).c_str());
            results += line;
            failures += o.error.empty() ? 0 : 1;
        }
    }
    for (int i = 0; i < count; ++i) {
        if (bufs[i] != nullptr) {
            cudaSetDevice(i);
            cudaFree(bufs[i]);
        }
    }
    std::printf("{\"program\": \"p2p\", \"status\": \"ran\", \"gpu_count\": %d, \"error\": %s, "
                "\"results\": [%s]}\n", count,
                json_string_or_null(setup_error).c_str(), results.c_str());
    return (failures == 0 && setup_error.empty()) ? 0 : 1;
}
