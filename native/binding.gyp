# Built by `npm install` / `npm ci` (package.json "install": node-gyp rebuild -C native).
# Needs Debian's libibverbs-dev and librdmacm-dev; no RDMA device is needed to build or load.
{
  "targets": [
    {
      "target_name": "srp_nbd_native",
      "sources": ["src/addon.cc", "src/proc.cc", "src/rdma.cc", "src/sys.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "libraries": ["-lrdmacm", "-libverbs"]
    }
  ]
}
