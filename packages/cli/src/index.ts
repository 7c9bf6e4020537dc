export { buildProgram } from './program.js';
export { runDemo, statsTable, type DemoOptions } from './commands/demo.js';
