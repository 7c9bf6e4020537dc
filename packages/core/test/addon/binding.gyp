{
  "targets": [
    {
      "target_name": "stack_client_test",
      "sources": ["native/stack_client_test.cc"],
      "include_dirs": ["<!@(node -p \"require('node-addon-api').include\")", "../../include"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-std=c++17", "-O2", "-Wall", "-Wextra"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++1y", "-std=gnu++14"]
    }
  ]
}
