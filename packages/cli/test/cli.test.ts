import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { buildProgram } from '../src/program.js';
import { runDemo } from '../src/commands/demo.js';

describe('tierstack CLI', () => {
  it('lists its commands in --help', () => {
    const help = buildProgram().helpInformation();
    for (const cmd of ['demo', 'bench']) expect(help).toContain(cmd);
  });

  it('the built binary prints help', () => {
    const bin = fileURLToPath(new URL('../dist/bin.js', import.meta.url));
    const out = execFileSync(process.execPath, [bin, '--help'], { encoding: 'utf8' });
    expect(out).toMatch(/Usage: tierstack/);
    expect(out).toContain('demo');
  });

  it('the demo reads back every page byte-correct through a stack under memory pressure', async () => {
    const lines: string[] = [];
    const r = await runDemo({ pages: 2048, memoryMiB: 1, out: (l) => lines.push(l) });
    expect(r).toEqual({ verified: 2048, wrong: 0 });
    expect(lines.join('\n')).toMatch(/memory\s+\d+/);
    expect(lines.join('\n')).toMatch(/file\s+\d+/);
  });
});
