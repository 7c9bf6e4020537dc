// Preloaded (node --require) by tools/asan.sh: loads the AddressSanitizer build of the rdma
// addon ($TIERSTACK_RDMA_ADDON) wherever build/Release/tierstack_rdma.node is asked for, in the
// test process and in the memd donors it spawns.
'use strict';
const path = require('node:path');

const asan = process.env.TIERSTACK_RDMA_ADDON;
if (asan) {
  const dlopen = process.dlopen;
  process.dlopen = function (module, filename, ...rest) {
    const f = path.basename(filename) === 'tierstack_rdma.node' ? asan : filename;
    return dlopen.call(this, module, f, ...rest);
  };
}
