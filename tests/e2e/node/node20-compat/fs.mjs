// `node:fs` plus a `globSync` export, which Node.js 20 lacks.
import fs from 'node:fs';

export * from 'node:fs';
export default fs;
export const globSync =
  fs.globSync ??
  function globSync() {
    throw new Error('fs.globSync needs Node.js 22 or later');
  };
