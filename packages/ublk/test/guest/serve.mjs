// Guest-side server (what `tierstack ublk add` does, from this package's dist only):
//   node serve.mjs add <name> <size-bytes> <data-dir> <state-dir> [ublk|fuse-loop] [on|off]   (foreground until SIGTERM;
//        on/off: user recovery, default on — a device whose server died is taken over by the next add)
//   node serve.mjs del <name> <state-dir>
//   node serve.mjs stats <name> <state-dir>
import { serveDevice, deleteDevice, readDeviceStats } from '../../dist/index.js';

const [cmd, name, ...rest] = process.argv.slice(2);
if (cmd === 'add') {
  const [size, dataDir, stateDir, transport = 'ublk', recovery = 'on'] = rest;
  const server = await serveDevice({ name, sizeBytes: Number(size), transport, queues: 2, depth: 32, dataDir, memoryMiB: 16, stateDir, recovery: recovery !== 'off' });
  console.log(JSON.stringify({ event: 'ready', ...server.state }));
  process.once('SIGTERM', () => server.stop().then(() => console.log(JSON.stringify({ event: 'stopped' }))));
} else if (cmd === 'del') {
  await deleteDevice(name, { stateDir: rest[0] });
} else if (cmd === 'stats') {
  console.log(JSON.stringify(readDeviceStats(name, rest[0])));
} else {
  console.error('usage: serve.mjs add|del|stats ...');
  process.exit(2);
}
