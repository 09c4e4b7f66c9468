// parse-server 9.10 on PostgreSQL, publishing live classes to Redis — the reference stack
// the conformance suite runs against. Configured entirely from the environment by stack.mjs.
import express from 'express';
import { ParseServer } from 'parse-server';

const env = process.env;
const port = Number(env.PARSE_PORT);
const server = new ParseServer({
  appId: env.APP_ID,
  masterKey: env.MASTER_KEY,
  javascriptKey: env.JS_KEY,
  databaseURI: env.DATABASE_URI,
  // Keep every process's schema cache current when another process changes a schema (the
  // reference LiveQuery server runs in its own process, as in the Redis scaling setup).
  databaseOptions: { enableSchemaHooks: true },
  serverURL: `http://127.0.0.1:${port}/parse`,
  liveQuery: { classNames: env.LIVE_CLASSES.split(','), redisURL: env.REDIS_URL },
  allowClientClassCreation: true,
  masterKeyIps: ['127.0.0.1', '::1', '::ffff:127.0.0.1'],
  logLevel: 'error',
  logsFolder: env.LOGS_DIR,
  silent: true,
  // Cloud Code (tests/conformance/hooks, tests/bench/hooks.mjs): LiveQuery triggers run in the
  // process of the LiveQuery server, the Cloud Functions livequery calls in parse-server's.
  ...(env.CLOUD_CODE ? { cloud: env.CLOUD_CODE } : {}),
});
await server.start();
const app = express();
app.use('/parse', server.app);
app.listen(port, '127.0.0.1', () => console.log('ready'));
