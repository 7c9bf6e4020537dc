// Names the test files behind a red run at the very end of the output.
//
// vitest's own summary counts a file whose worker crashed (SIGSEGV in an addon, an abort) as
// neither passed nor failed and reports the crash as an anonymous "Errors 1 error" — the file
// it came from is nowhere in the output. This reporter remembers which files were running and
// prints, after vitest's summary, every file that failed, never finished, or raised an error
// outside a test, so the log of a red CI run says where to look.
import type { Reporter, TestModule } from 'vitest/node';
import path from 'node:path';

type Verdict = { file: string; why: string };

export default class FailedFilesReporter implements Reporter {
  private readonly running = new Set<TestModule>();

  onTestModuleStart(testModule: TestModule): void {
    this.running.add(testModule);
  }

  onTestModuleEnd(testModule: TestModule): void {
    this.running.delete(testModule);
  }

  onTestRunEnd(
    testModules: ReadonlyArray<TestModule>,
    unhandledErrors: ReadonlyArray<{ message?: string; stack?: string }>,
  ): void {
    const verdicts: Verdict[] = [];
    for (const testModule of testModules) {
      const file = path.relative(process.cwd(), testModule.moduleId);
      const state = testModule.state();
      if (this.running.has(testModule) || state === 'pending' || state === 'queued') {
        verdicts.push({ file, why: 'did not finish (its worker crashed or was killed)' });
      } else if (state === 'failed') {
        const failed = [...testModule.children.allTests('failed')].map((t) => t.fullName);
        const why = failed.length > 0 ? `failed: ${failed.join(' | ')}` : 'failed outside its tests (import or hook error)';
        verdicts.push({ file, why });
      }
      for (const error of testModule.errors()) {
        verdicts.push({ file, why: `error outside a test: ${error.message ?? String(error)}` });
      }
    }
    if (verdicts.length === 0 && unhandledErrors.length === 0) return;
    const lines = ['', 'Files behind this red run:'];
    for (const v of verdicts) lines.push(`  FAIL ${v.file} — ${v.why}`);
    if (unhandledErrors.length > 0) {
      lines.push(`  ${unhandledErrors.length} error(s) not tied to a test (see "Unhandled Error" above):`);
      for (const e of unhandledErrors) lines.push(`    ${firstLine(e.message ?? e.stack ?? 'unknown error')}`);
    }
    process.stdout.write(lines.join('\n') + '\n');
  }
}

function firstLine(text: string): string {
  const line = text.split('\n')[0] ?? '';
  return line.length > 200 ? `${line.slice(0, 200)}…` : line;
}
