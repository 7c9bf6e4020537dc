{
  "targets": [
    {
      "target_name": "tierstack_rdma",
      "sources": ["native/addon.cc", "native/fabric.cc", "native/donor.cc", "native/slab_map.cc", "native/completions.cc",
                  "native/connections.cc", "native/rma.cc", "native/replica_copy.cc", "native/staging.cc", "native/pool.cc"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!(node -p \"require('path').join(require('path').dirname(require.resolve('@tierstack/core/package.json')),'include')\")"
      ],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wno-missing-field-initializers", "<!@(pkg-config --cflags libfabric)"],
      "libraries": ["<!@(pkg-config --libs libfabric)", "-lpthread"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"]
    }
  ]
}
