{
  "target_defaults": {
    "include_dirs": [
      "<!(node -p \"require('node-addon-api').include_dir\")",
      "<!(node -p \"require('path').join(require('path').dirname(require.resolve('@tierstack/core/package.json')),'include')\")"
    ],
    "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
    "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++1y", "-std=gnu++14"],
    "libraries": ["-lpthread"]
  },
  "targets": [
    {
      "target_name": "tierstack_uffd",
      "sources": ["native/addon.cc", "native/engine.cc", "native/fill.cc", "native/managed.cc", "native/unix_socket.cc", "native/shared_region.cc", "native/shared_region_napi.cc"]
    },
    {
      "target_name": "tierstack_uffd_testing",
      "sources": ["native/testing/addon.cc"]
    }
  ]
}
