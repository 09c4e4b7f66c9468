// parse-server's own LiveQuery server as a separate process fed by Redis — what livequery
// replaces, started by the same tooling so the suite can be pointed at it for comparison.
import http from 'node:http';
import { ParseServer } from 'parse-server';

const env = process.env;
// A standalone LiveQuery process needs the app's config registered in-process for its
// subscribe-time checks. The ParseServer is started (for its schema
// hooks, which keep the schema cache current) but not mounted: it serves nothing.
const inProcess = new ParseServer({
  appId: env.APP_ID,
  masterKey: env.MASTER_KEY,
  javascriptKey: env.JS_KEY,
  databaseURI: env.DATABASE_URI,
  // Keep every process's schema cache current when another process changes a schema (the
  // reference LiveQuery server runs in its own process, as in the Redis scaling setup).
  databaseOptions: { enableSchemaHooks: true },
  serverURL: env.PARSE_SERVER_URL,
  masterKeyIps: ['127.0.0.1', '::1', '::ffff:127.0.0.1'],
  logLevel: 'error',
  logsFolder: env.LOGS_DIR,
  silent: true,
  // Cloud Code (tests/conformance/hooks, tests/bench/hooks.mjs): LiveQuery triggers run in the
  // process of the LiveQuery server, the Cloud Functions livequery calls in parse-server's.
  ...(env.CLOUD_CODE ? { cloud: env.CLOUD_CODE } : {}),
});
await inProcess.start();
const httpServer = http.createServer();
httpServer.listen(Number(env.LQ_PORT), '127.0.0.1', async () => {
  await ParseServer.createLiveQueryServer(httpServer, {
    appId: env.APP_ID,
    masterKey: env.MASTER_KEY,
    serverURL: env.PARSE_SERVER_URL,
    redisURL: env.REDIS_URL,
    keyPairs: { javascriptKey: env.JS_KEY, masterKey: env.MASTER_KEY },
    cacheTimeout: Number(env.CACHE_TIMEOUT_MS),
    websocketTimeout: 10000,
    logLevel: 'NONE',
  });
  console.log('ready');
});
