// gpu_membw.cu - the bandwidths the GPU benchmarks are measured against, on this machine:
//   device: a kernel that reads a 2 GiB buffer (the decode bound: weights are read, not written)
//   h2d:    pinned host -> device copies of 256 MiB (the PCIe bound of a variant reload)
// Prints one JSON object: {"device_read_gbs": ..., "h2d_gbs": ..., "gpu": "..."}, medians of 10.
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>

#include <algorithm>
#include <vector>

#define CK(x)                                                                          \
  do {                                                                                 \
    cudaError_t e_ = (x);                                                              \
    if (e_ != cudaSuccess) {                                                           \
      fprintf(stderr, "ac-gpu-membw: %s: %s\n", #x, cudaGetErrorString(e_));           \
      return 1;                                                                        \
    }                                                                                  \
  } while (0)

// Each thread sums its strided float4s; the sum is written only if it is impossible, so the
// compiler keeps the loads and the kernel writes (almost) nothing.
__global__ void read_all(const float4 *p, size_t n, float *sink) {
  float s = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    float4 v = p[i];
    s += v.x + v.y + v.z + v.w;
  }
  if (s == -1.2345f) *sink = s;
}

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int main(int argc, char **argv) {
  int gpu = argc > 1 ? atoi(argv[1]) : 0;
  CK(cudaSetDevice(gpu));
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, gpu));
  const size_t dev_bytes = (size_t)2 << 30, h2d_bytes = (size_t)256 << 20;
  float4 *d;
  float *sink;
  void *h;
  CK(cudaMalloc(&d, dev_bytes));
  CK(cudaMalloc(&sink, sizeof(float)));
  CK(cudaMemset(d, 0, dev_bytes));
  CK(cudaHostAlloc(&h, h2d_bytes, cudaHostAllocDefault));
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  std::vector<double> rd, up;
  int blocks = prop.multiProcessorCount * 8;
  for (int i = 0; i < 11; i++) {
    float ms;
    CK(cudaEventRecord(a));
    read_all<<<blocks, 512>>>(d, dev_bytes / sizeof(float4), sink);
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    CK(cudaEventElapsedTime(&ms, a, b));
    if (i) rd.push_back(dev_bytes / (ms * 1e-3) / 1e9);  // the first run warms up
    CK(cudaEventRecord(a));
    CK(cudaMemcpyAsync(d, h, h2d_bytes, cudaMemcpyHostToDevice));
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    CK(cudaEventElapsedTime(&ms, a, b));
    if (i) up.push_back(h2d_bytes / (ms * 1e-3) / 1e9);
  }
  printf("{\"gpu\": \"%s\", \"device_read_gbs\": %.1f, \"h2d_gbs\": %.1f}\n", prop.name, median(rd), median(up));
  cudaFreeHost(h);
  cudaFree(d);
  cudaFree(sink);
  return 0;
}
