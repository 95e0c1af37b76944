// heat-gpu sample: device_query.
//
// Prints one JSON document describing every GPU the CUDA runtime sees: name, compute capability,
// memory, memory bus, PCI bus id, UUID, ECC state and, when the driver's NVML library can be
// loaded at run time, the PCIe link generation and width. Without NVML the link fields are null
// and the runner fills them from /sys. Exit status: 0 when every GPU answered, 1 otherwise.
//
// Build: nvcc -O2 -std=c++17 -arch=sm_XY -o device_query device_query.cu -ldl

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdio>
#include <string>

#include "sample_common.cuh"

namespace {

std::string format_uuid(const cudaUUID_t &uuid) {
    // The same text nvidia-smi prints: GPU-8-4-4-4-12 hex digits.
    const unsigned char *b = reinterpret_cast<const unsigned char *>(uuid.bytes);
    char buf[64];
    std::snprintf(buf, sizeof(buf),
                  "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                  b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11],
                  b[12], b[13], b[14], b[15]);
    return buf;
}

std::string json_uint_or_null(bool known, unsigned int value) {
    return known ? std::to_string(value) : std::string("null");
}

// NVML, loaded with dlopen so the program needs neither nvml.h nor libnvidia-ml at build time.
// The ABI: every call returns 0 on success; devices are opaque handles.
struct Nvml {
    using Handle = void *;
    using InitFn = int (*)();
    using ByBusIdFn = int (*)(const char *, Handle *);
    using UintFn = int (*)(Handle, unsigned int *);

    void *lib = nullptr;
    InitFn shutdown = nullptr;
    ByBusIdFn by_bus_id = nullptr;
    UintFn max_gen = nullptr;
    UintFn max_width = nullptr;
    UintFn cur_gen = nullptr;
    UintFn cur_width = nullptr;

    bool open() {
        lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
        if (lib == nullptr) {
            return false;
        }
        InitFn init = reinterpret_cast<InitFn>(dlsym(lib, "nvmlInit_v2"));
        shutdown = reinterpret_cast<InitFn>(dlsym(lib, "nvmlShutdown"));
        by_bus_id = reinterpret_cast<ByBusIdFn>(dlsym(lib, "nvmlDeviceGetHandleByPciBusId_v2"));
        max_gen = reinterpret_cast<UintFn>(dlsym(lib, "nvmlDeviceGetMaxPcieLinkGeneration"));
        max_width = reinterpret_cast<UintFn>(dlsym(lib, "nvmlDeviceGetMaxPcieLinkWidth"));
        cur_gen = reinterpret_cast<UintFn>(dlsym(lib, "nvmlDeviceGetCurrPcieLinkGeneration"));
        cur_width = reinterpret_cast<UintFn>(dlsym(lib, "nvmlDeviceGetCurrPcieLinkWidth"));
        if (init == nullptr || shutdown == nullptr || by_bus_id == nullptr || init() != 0) {
            dlclose(lib);
            lib = nullptr;
            return false;
        }
        return true;
    }

    void close() {
        if (lib != nullptr) {
            shutdown();
            dlclose(lib);
            lib = nullptr;
        }
    }

    static bool query(UintFn fn, Handle dev, unsigned int *out) {
        return fn != nullptr && fn(dev, out) == 0;
    }
};

}  // namespace

int main() {
    int driver_version = 0;
    int runtime_version = 0;
    cudaDriverGetVersion(&driver_version);
    cudaRuntimeGetVersion(&runtime_version);

    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        std::printf("{\"program\": \"device_query\", \"cuda_driver_version\": %d, "
                    "\"cuda_runtime_version\": %d, \"nvml\": false, \"error\": %s, "
                    "\"results\": []}\n",
                    driver_version, runtime_version, json_string(cuda_error(err)).c_str());
        return 1;
    }

    Nvml nvml;
    const bool have_nvml = nvml.open();
    int failures = 0;
    std::string results;
    for (int i = 0; i < count; ++i) {
        cudaDeviceProp prop{};
        std::string error;
        err = cudaGetDeviceProperties(&prop, i);
        if (err != cudaSuccess) {
            error = cuda_error(err);
        }
        char bus_id[32] = "";
        if (error.empty() && (err = cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), i)) != cudaSuccess) {
            error = cuda_error(err);
        }
        int mem_clock_khz = 0;
        int bus_width_bits = 0;
        if (error.empty()) {
            cudaDeviceGetAttribute(&mem_clock_khz, cudaDevAttrMemoryClockRate, i);
            cudaDeviceGetAttribute(&bus_width_bits, cudaDevAttrGlobalMemoryBusWidth, i);
        }
        // Usable means a context can be made and memory allocated, not only that the device is listed.
        bool usable = false;
        if (error.empty() && (err = cudaSetDevice(i)) == cudaSuccess) {
            void *probe = nullptr;
            err = cudaMalloc(&probe, 1 << 20);
            if (err == cudaSuccess) {
                usable = cudaFree(probe) == cudaSuccess;
            }
        }
        if (error.empty() && err != cudaSuccess) {
            error = cuda_error(err);
        }

        unsigned int max_gen = 0, max_width = 0, cur_gen = 0, cur_width = 0;
        bool k_max_gen = false, k_max_width = false, k_cur_gen = false, k_cur_width = false;
        if (have_nvml && bus_id[0] != '\0') {
            Nvml::Handle dev = nullptr;
            if (nvml.by_bus_id(bus_id, &dev) == 0) {
                k_max_gen = Nvml::query(nvml.max_gen, dev, &max_gen);
                k_max_width = Nvml::query(nvml.max_width, dev, &max_width);
                k_cur_gen = Nvml::query(nvml.cur_gen, dev, &cur_gen);
                k_cur_width = Nvml::query(nvml.cur_width, dev, &cur_width);
            }
        }
        // Peak memory bandwidth from the memory clock (kHz, double data rate) and bus width.
        const double mem_gbps = 2.0 * mem_clock_khz * 1e3 * (bus_width_bits / 8.0) / 1e9;

        char line[2048];
        std::snprintf(
            line, sizeof(line),
            "%s{\"gpu_index\": %d, \"name\": %s, \"compute_capability\": \"%d.%d\", "
            "\"memory_mib\": %llu, \"multiprocessors\": %d, \"memory_clock_khz\": %d, "
            "\"memory_bus_width_bits\": %d, \"memory_bandwidth_gbps\": %.1f, "
            "\"pci_bus_id\": %s, \"uuid\": %s, \"ecc_enabled\": %s, "
            "\"pcie_link_gen_max\": %s, \"pcie_link_width_max\": %s, "
            "\"pcie_link_gen\": %s, \"pcie_link_width\": %s, \"usable\": %s, \"error\": %s}",
            i == 0 ? "" : ", ", i, json_string(prop.name).c_str(), prop.major, prop.minor,
            static_cast<unsigned long long>(prop.totalGlobalMem >> 20), prop.multiProcessorCount,
            mem_clock_khz, bus_width_bits, mem_gbps, json_string(bus_id).c_str(),
            json_string(format_uuid(prop.uuid)).c_str(),
            prop.ECCEnabled ? "true" : "false", json_uint_or_null(k_max_gen, max_gen).c_str(),
            json_uint_or_null(k_max_width, max_width).c_str(),
            json_uint_or_null(k_cur_gen, cur_gen).c_str(),
            json_uint_or_null(k_cur_width, cur_width).c_str(), usable ? "true" : "false",
            json_string_or_null(error).c_str());
        results += line;
        if (!usable) {
            ++failures;
        }
    }
    nvml.close();

    std::printf("{\"program\": \"device_query\", \"cuda_driver_version\": %d, "
                "\"cuda_runtime_version\": %d, \"nvml\": %s, \"error\": %s, \"results\": [%s]}\n",
                driver_version, runtime_version, have_nvml ? "true" : "false",
                count == 0 ? "\"no CUDA device visible\"" : "null", results.c_str());
    return (failures == 0 && count > 0) ? 0 : 1;
}
