{
  "target_defaults": {
    "include_dirs": [
      "<!(node -p \"require('node-addon-api').include_dir\")",
      "include"
    ],
    "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
    "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-fvisibility=hidden"],
    "cflags_cc!": ["-fno-exceptions", "-std=gnu++1y", "-std=gnu++14"]
  },
  "targets": [
    {
      "target_name": "tierstack_core",
      "sources": ["native/file_store.cc", "native/snapshot_reader.cc", "native/addon.cc"]
    },
    {
      "target_name": "tierstack_core_testing",
      "sources": ["native/testing/addon.cc"]
    }
  ]
}
