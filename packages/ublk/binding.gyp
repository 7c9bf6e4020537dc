{
  "targets": [
    {
      "target_name": "tierstack_ublk",
      "sources": [
        "native/addon.cc",
        "native/block_handler.cc",
        "native/fuse_transport.cc",
        "native/loop_attach.cc",
        "native/recovery.cc",
        "native/ublk_transport.cc"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!(node -p \"require('path').join(require('path').dirname(require.resolve('@tierstack/core/package.json')),'include')\")",
        "<!@(pkg-config --cflags-only-I fuse3 | sed 's/-I//g')"
      ],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS", "FUSE_USE_VERSION=312", "_FILE_OFFSET_BITS=64"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++1y", "-std=gnu++14"],
      "libraries": ["<!@(pkg-config --libs fuse3)", "-luring", "-lpthread"]
    }
  ]
}
