{
  "target_defaults": {
    "include_dirs": [
      "<!(node -p \"require('node-addon-api').include_dir\")",
      "<!(node -p \"require('path').join(require('path').dirname(require.resolve('@tierstack/core/package.json')),'include')\")"
    ],
    "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
    "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++1y", "-std=gnu++14"]
  },
  "targets": [
    {
      "target_name": "tierstack_cxl",
      "sources": ["native/region.cc", "native/cache.cc", "native/store.cc", "native/addon.cc"]
    },
    {
      "target_name": "tierstack_cxl_testing",
      "sources": ["native/region.cc", "native/cache.cc", "native/store.cc", "native/testing/addon.cc"],
      "defines": ["TIERSTACK_TESTING"]
    }
  ]
}
