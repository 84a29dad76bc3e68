# The CUDA backend when nvcc is found; otherwise stubs that throw a clear lmx::Error.
if(LMX_HAVE_CUDA)
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  # CMake 3.25 predates nvcc's C++20 flags; nvcc 12+ accepts -std=c++20.
  if(NOT DEFINED CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
    set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
    set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
  endif()
  file(GLOB lmx_cuda_srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.cu ${CMAKE_CURRENT_LIST_DIR}/*.cpp)
  list(FILTER lmx_cuda_srcs EXCLUDE REGEX "stub\\.cpp$")
  target_sources(lmx_ops PRIVATE ${lmx_cuda_srcs})
  # sm_90a: the Hopper-only instructions (wgmma, TMA multicast) of glu_gemm.cu. The compute_90
  # PTX keeps the other kernels loadable on later GPUs; there glu_gemm.cu declines at run time.
  set_target_properties(lmx_ops PROPERTIES CUDA_ARCHITECTURES "90a-real;90-virtual" CUDA_SEPARABLE_COMPILATION OFF
                                           CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON)
  # No contraction of a*b+c into FMA: every kernel rounds as the CPU backend's scalar code
  # does, which keeps random() bit-exact and the fused ops within one rounding of the CPU.
  # Host-side warnings of the .cu files count as errors-to-fix like the C++ ones.
  target_compile_options(lmx_ops PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:--fmad=false -Xcompiler=-Wall,-Wextra>)
  target_compile_definitions(lmx_ops PUBLIC LMX_HAVE_CUDA=1)
  target_link_libraries(lmx_ops PUBLIC CUDA::cudart CUDA::cublas CUDA::cublasLt)
else()
  target_sources(lmx_ops PRIVATE ${CMAKE_CURRENT_LIST_DIR}/stub.cpp)
endif()
