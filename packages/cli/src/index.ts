export { buildProgram } from './program.js';
export { runDemo, statsTable, type DemoOptions } from './commands/demo.js';
export { openDefaultStack, openStack, type StackCliOptions } from './stack-options.js';
