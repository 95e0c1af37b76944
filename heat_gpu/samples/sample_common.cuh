// heat-gpu sample programs: the helpers every program includes (header only).
//
// Each program prints one JSON line; these write its common parts (JSON strings, CUDA error
// texts, the {"program", "error", "results"} document and the loop over the GPUs that fills it),
// read the programs' settings from the environment, release what a run created, and index
// grid-stride kernel loops. Not a program itself: it carries no "heat-gpu sample:" marker line.

#ifndef HEAT_GPU_SAMPLE_COMMON_CUH
#define HEAT_GPU_SAMPLE_COMMON_CUH

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

// `text` as a JSON string: quoted, with '"', '\' and control characters escaped.
inline std::string json_string(const std::string &text) {
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

// JSON null for an empty text, else the text as a JSON string (the "error" fields).
inline std::string json_string_or_null(const std::string &text) {
    return text.empty() ? std::string("null") : json_string(text);
}

// "cudaErrorName: description" of a CUDA runtime error.
inline std::string cuda_error(cudaError_t err) {
    return std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
}

// The same, after the step that failed: "what: cudaErrorName: description".
inline std::string cuda_error(const char *what, cudaError_t err) {
    return std::string(what) + ": " + cuda_error(err);
}

// The positive integer in environment variable `name`; `fallback` when unset, empty or not > 0.
inline long env_long(const char *name, long fallback) {
    const char *text = std::getenv(name);
    if (text == nullptr || *text == '\0') {
        return fallback;
    }
    const long value = std::strtol(text, nullptr, 10);
    return value > 0 ? value : fallback;
}

// The same as an int (counts and sizes the programs keep small).
inline int env_int(const char *name, int fallback) {
    return static_cast<int>(env_long(name, fallback));
}

// A size given in MiB in environment variable `name`, in bytes.
inline size_t env_mib(const char *name, long fallback_mib) {
    return static_cast<size_t>(env_long(name, fallback_mib)) << 20;
}

// The number of visible CUDA devices; 0 with `why` set when there is none to run on.
inline int visible_devices(std::string *why) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
        *why = cuda_error("cudaGetDeviceCount", err);
        return 0;
    }
    if (count == 0) {
        *why = "no CUDA device visible";
    }
    return count;
}

// Prints the program's one JSON line; `error` empty means null, `results` is the joined entries.
inline void print_document(const char *program, const std::string &error,
                           const std::string &results) {
    std::printf("{\"program\": \"%s\", \"error\": %s, \"results\": [%s]}\n", program,
                json_string_or_null(error).c_str(), results.c_str());
}

// The buffer one GPU's JSON object is written to.
using EntryLine = char[1024];

// The main() of a program that tests each GPU on its own: `entry(i, line)` tests GPU i, writes
// its JSON object to `line` and returns whether it passed. Prints the document with every entry
// (or the reason no GPU could be tested) and returns the exit status: 0 when every GPU passed,
// 1 otherwise.
template <typename Entry>
int run_each_gpu(const char *program, Entry entry) {
    std::string why;
    const int count = visible_devices(&why);
    if (count == 0) {
        print_document(program, why, "");
        return 1;
    }
    int failures = 0;
    std::string results;
    for (int i = 0; i < count; ++i) {
        EntryLine line = "";
        failures += entry(i, line) ? 0 : 1;
        results += (i == 0 ? "" : ", ") + std::string(line);
    }
    print_document(program, "", results);
    return failures == 0 ? 0 : 1;
}

// Releases an event, a stream or device memory a run created; a null one was never created and is
// skipped.
inline void release_one(cudaEvent_t event) {
    if (event != nullptr) {
        cudaEventDestroy(event);
    }
}

inline void release_one(cudaStream_t stream) {
    if (stream != nullptr) {
        cudaStreamDestroy(stream);
    }
}

inline void release_one(void *device_memory) {
    if (device_memory != nullptr) {
        cudaFree(device_memory);
    }
}

// Releases every event, stream and device buffer given, whether or not the run got to create it.
template <typename... Handles>
void release(Handles... handles) {
    (release_one(handles), ...);
}

// A grid-stride loop over n elements: each thread of the grid starts at grid_first() and steps
// by grid_stride(), so any launch size covers every element.
__device__ inline size_t grid_first() {
    return blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
}

__device__ inline size_t grid_stride() {
    return static_cast<size_t>(blockDim.x) * gridDim.x;
}

}  // namespace

#endif  // HEAT_GPU_SAMPLE_COMMON_CUH
