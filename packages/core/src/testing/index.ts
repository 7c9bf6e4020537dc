export { runPageStoreConformance, type ConformanceOptions } from './conformance.js';
export { fillPage, makePages, decodePage, pageMatches } from './patterns.js';
