/**
 * libfabric settings with no environment tuning: the defaults memd and the client apply before
 * the process's first libfabric use, and the user's environment winning over them. Each case
 * runs in a fresh node process (the environment is process-wide and read once by libfabric).
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ensureBuilt, spawnMemd, stopAll } from './helpers.js';

const dist = join(import.meta.dirname, '..', 'dist', 'native.js');
afterAll(stopAll);

/** providerDefaults(provider) in a child process with `env` added; the list and the env after. */
function defaultsIn(provider: string, env: Record<string, string> = {}): { list: Array<{ name: string; value: string; ours: boolean }>; after: Record<string, string | undefined> } {
  ensureBuilt();
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FI_')));
  const code = `const { rdmaAddon } = await import(${JSON.stringify(dist)});
const list = rdmaAddon().providerDefaults(${JSON.stringify(provider)});
const after = Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('FI_')));
console.log(JSON.stringify({ list, after }));`;
  return JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', code], { env: { ...clean, ...env }, encoding: 'utf8' }));
}

describe('provider defaults', () => {
  it('ofi_rxm over verbs: universe size 16 and rxm MSG queue sizes, set in the environment', () => {
    const { list, after } = defaultsIn('verbs;ofi_rxm');
    expect(list).toEqual([
      { name: 'FI_MR_CACHE_MONITOR', value: 'disabled', ours: true },
      { name: 'FI_UNIVERSE_SIZE', value: '16', ours: true },
      { name: 'FI_OFI_RXM_MSG_TX_SIZE', value: '128', ours: true },
      { name: 'FI_OFI_RXM_MSG_RX_SIZE', value: '128', ours: true },
    ]);
    expect(after).toEqual({ FI_MR_CACHE_MONITOR: 'disabled', FI_UNIVERSE_SIZE: '16', FI_OFI_RXM_MSG_TX_SIZE: '128', FI_OFI_RXM_MSG_RX_SIZE: '128' });
  });

  it("keeps the user's values", () => {
    const { list, after } = defaultsIn('verbs;ofi_rxm', { FI_UNIVERSE_SIZE: '64', FI_MR_CACHE_MONITOR: 'kdreg2' });
    expect(list.find((s) => s.name === 'FI_UNIVERSE_SIZE')).toEqual({ name: 'FI_UNIVERSE_SIZE', value: '64', ours: false });
    expect(list.find((s) => s.name === 'FI_MR_CACHE_MONITOR')).toEqual({ name: 'FI_MR_CACHE_MONITOR', value: 'kdreg2', ours: false });
    expect(after.FI_UNIVERSE_SIZE).toBe('64');
    expect(after.FI_OFI_RXM_MSG_TX_SIZE).toBe('128');
  });

  it('other providers: only the MR cache monitor (tcp, verbs, tcp;ofi_rxm)', () => {
    for (const p of ['tcp', 'verbs', 'tcp;ofi_rxm']) {
      const { list } = defaultsIn(p);
      expect(list.map((s) => s.name)).toEqual(['FI_MR_CACHE_MONITOR']);
    }
  });

  it('memd logs the settings it runs with', async () => {
    const m = await spawnMemd({ provider: 'tcp' });
    const line = m.stderr().split('\n').find((l) => l.includes('memd listening'))!;
    expect((JSON.parse(line) as { libfabricEnv: Record<string, string> }).libfabricEnv).toEqual({ FI_MR_CACHE_MONITOR: 'disabled' });
  });
});
