{
  "targets": [
    {
      # The LD_PRELOAD library: plain C, linked with no C++ runtime (build/Release/libtierstack_run.so).
      "target_name": "libtierstack_run",
      "product_name": "tierstack_run",
      "type": "shared_library",
      "sources": ["native/run/interpose.c"],
      "cflags": ["-std=gnu11", "-O2", "-fPIC", "-fvisibility=hidden", "-fomit-frame-pointer", "-fno-plt", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "cflags!": ["-fno-exceptions"],
      "ldflags": ["-Wl,--as-needed", "-Wl,-z,defs", "-nodefaultlibs"],
      "libraries": ["-lc", "-ldl", "-lpthread", "-lgcc"]
    },
    {
      "target_name": "tierstack_interposer",
      "sources": ["native/addon/addon.cc", "native/addon/cow_store.cc"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!(node -p \"require('path').join(require('path').dirname(require.resolve('@tierstack/core/package.json')),'include')\")"
      ],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++1y", "-std=gnu++14"],
      "libraries": ["-lpthread"]
    }
  ]
}
