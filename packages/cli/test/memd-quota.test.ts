/** `tierstack memd --client-quota-slabs`: the real CLI process refuses a client past its quota. */
import { describe, it, expect } from 'vitest';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { DonorClient } from '@tierstack/rdma';

const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));

describe('tierstack memd', () => {
  it('--client-quota-slabs 2: the third slab of one client is TS_ERR_NO_SPACE naming the quota; another client is served', async () => {
    const proc = spawn(process.execPath, [bin, 'memd', '--port', '0', '--capacity', '8M', '--slab-size', '1M', '--client-quota-slabs', '2', '--log-level', 'warn'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    proc.stderr!.on('data', (d) => (err += d));
    try {
      const ready = await new Promise<{ host: string; port: number }>((resolve, reject) => {
        createInterface({ input: proc.stdout! }).on('line', (l) => {
          const j = JSON.parse(l) as { ready?: boolean; host: string; port: number };
          if (j.ready) resolve(j);
        });
        proc.on('exit', (code) => reject(new Error(`memd exited (${code}): ${err}`)));
      });
      const a = await DonorClient.connect(ready);
      const b = await DonorClient.connect(ready);
      await a.allocSlab('a0');
      await a.allocSlab('a1');
      await expect(a.allocSlab('a2')).rejects.toMatchObject({ code: 'TS_ERR_NO_SPACE', message: expect.stringMatching(/client quota reached.*2 slabs \(2 MiB\) per client \(--client-quota-slabs 2\)/) });
      await b.allocSlab('b0');
      a.close();
      b.close();
      expect(err).toMatch(/slab refused: client quota reached/);
    } finally {
      proc.kill('SIGTERM');
      await new Promise((r) => proc.on('exit', r));
    }
  });
});
