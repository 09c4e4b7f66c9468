// A Parse JS SDK app receiving live events from livequery.
//
//   1. Start livequery:  LIVEQUERY__PARSE__MASTER_KEY=myMasterKey cargo run --release -p livequery-server
//   2. Run this:         cd examples/node && npm install && LIVEQUERY_MASTER_KEY=myMasterKey node demo.mjs
//
// It subscribes to `Message` objects of one room with the stock SDK, then plays parse-server's
// part: it posts afterSave/afterDelete messages to livequery's ingest endpoint (what a Cloud
// Code hook, a script or parse-server's Redis feed would do), and prints the events it gets.
import Parse from 'parse/node';

const liveQueryUrl = process.env.LIVEQUERY_URL ?? 'ws://127.0.0.1:1337';
const ingestUrl = liveQueryUrl.replace(/^ws/, 'http');
const masterKey = process.env.LIVEQUERY_MASTER_KEY;
if (!masterKey) {
  console.error('Set LIVEQUERY_MASTER_KEY to livequery\'s parse.master_key (start livequery with LIVEQUERY__PARSE__MASTER_KEY set).');
  process.exit(2);
}

Parse.initialize(process.env.PARSE_APP_ID ?? 'myAppId', process.env.PARSE_JAVASCRIPT_KEY);
Parse.serverURL = process.env.PARSE_SERVER_URL ?? 'http://127.0.0.1:1337/parse';
Parse.liveQueryServerURL = liveQueryUrl;

const room = `lobby-${Date.now()}`;
const query = new Parse.Query('Message').equalTo('room', room);
const subscription = await query.subscribe();
console.log(`subscribed to Message where room = ${room}`);

const seen = [];
const done = new Promise((resolve) => {
  const record = (op) => (object, original) => {
    console.log(`${op}: ${object.id} text=${JSON.stringify(object.get('text'))}` + (original?.get ? ` (was ${JSON.stringify(original.get('text'))})` : ''));
    seen.push(op);
    if (seen.length === 3) resolve();
  };
  for (const op of ['create', 'update', 'delete']) subscription.on(op, record(op));
});

// parse-server's pub/sub message format: {currentParseObject, originalParseObject?, classLevelPermissions?}
const publish = async (channel, message) => {
  const response = await fetch(`${ingestUrl}/livequery/v1/publish/${channel}`, {
    method: 'POST',
    headers: { 'X-Parse-Master-Key': masterKey, 'Content-Type': 'application/json' },
    body: JSON.stringify(message),
  });
  if (!response.ok) throw new Error(`publish ${channel}: ${response.status} ${await response.text()}`);
};
const now = new Date().toISOString();
const v1 = { className: 'Message', objectId: 'demo1', room, text: 'hello', createdAt: now, updatedAt: now };
const v2 = { ...v1, text: 'hello, edited', updatedAt: new Date().toISOString() };
await publish('afterSave', { currentParseObject: v1 });
await publish('afterSave', { currentParseObject: v2, originalParseObject: v1 });
await publish('afterDelete', { currentParseObject: v2 });

const timeout = setTimeout(() => {
  console.error(`timed out; received: ${seen.join(', ') || 'nothing'}`);
  process.exit(1);
}, 10_000);
await done;
clearTimeout(timeout);
await subscription.unsubscribe();
await Parse.LiveQuery.close();
console.log('received create, update and delete');
