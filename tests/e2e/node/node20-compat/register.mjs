// Loaded with `node --import`: lets @modelcontextprotocol/conformance, which is built for
// Node.js 22 and imports `globSync` from `fs` at start-up, run on Node.js 20 (Debian's and
// this project's). Only its `tier-check` command calls globSync; the client and server
// suites do not. On Node.js 22 and later the real globSync is used.
import { register } from 'node:module';

register(new URL('./hooks.mjs', import.meta.url));
