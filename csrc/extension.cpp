// Python module `sam_lightning._C`. Importing it runs the static TORCH_LIBRARY
// registrations of every operator file linked into the library; the module itself only
// reports how it was built.
#include <torch/extension.h>

namespace sam_lightning {

bool built_with_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace sam_lightning

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled operators of sam_lightning (registered as torch.ops.sam_lightning.*)";
  m.def("built_with_cuda", &sam_lightning::built_with_cuda,
        "Whether CUDA kernels were compiled into this build.");
  m.attr("torch_version") = TORCH_VERSION;
}
