// Cloud Code of a chat app whose clients follow `Message` objects over LiveQuery.
//
// Three rules, each written once and exposed twice:
// - as parse-server LiveQuery triggers (Parse.Cloud.beforeConnect / beforeSubscribe /
//   afterLiveQueryEvent), which parse-server's own LiveQuery server runs in its process;
// - as Cloud Functions (lqBeforeConnect / lqBeforeSubscribe / lqAfterEvent) that livequery
//   calls over REST with the master key (see livequery.toml and protocol-spec/hooks.md):
//   `request.params` is livequery's hook request, the function's result is its answer.
//
// Load it as parse-server's `cloud` file (`cloud: 'examples/cloud-code/main.js'`) in every
// process that runs Cloud Code: parse-server itself and, if you use it, parse-server's
// LiveQuery server.

/** Class holding bans: `installationId` (string) or `userId` (a `_User` objectId), `reason`. */
const BAN_CLASS = 'LiveQueryBan';

// ---------------------------------------------------------------------------------------------
// The rules.

/**
 * beforeConnect: a banned installation or user may not connect. Throws the Parse.Error the
 * client sees in its `error` frame (code 119, "Banned: <reason>").
 */
async function refuseBanned(installationId, userId) {
  const queries = [];
  if (installationId) queries.push(new Parse.Query(BAN_CLASS).equalTo('installationId', installationId));
  if (userId) queries.push(new Parse.Query(BAN_CLASS).equalTo('userId', userId));
  if (queries.length === 0) return;
  const ban = await Parse.Query.or(...queries).first({ useMasterKey: true });
  if (ban) {
    throw new Parse.Error(Parse.Error.OPERATION_FORBIDDEN, `Banned: ${ban.get('reason') || 'no reason given'}`);
  }
}

/**
 * beforeSubscribe on Message: only a logged-in user may subscribe, and only to their own
 * tenant's messages. Returns the tenant the subscription is restricted to (the caller adds
 * `tenant = <it>` to the query's where, replacing any tenant the client asked for).
 */
function tenantRestriction(user) {
  if (!user) throw new Parse.Error(Parse.Error.OPERATION_FORBIDDEN, 'Log in to follow messages');
  const tenant = user.get('tenant');
  if (typeof tenant !== 'string' || tenant === '') {
    throw new Parse.Error(Parse.Error.OPERATION_FORBIDDEN, 'Your account belongs to no tenant');
  }
  return tenant;
}

/**
 * afterLiveQueryEvent on Message: a message marked `hidden` is not sent (returns false);
 * otherwise its `author` (a `_User` pointer) is replaced by the user with only public fields,
 * so clients can show `message.get('author').get('username')` without a second request.
 * Changes `object` and `original` in place.
 */
async function presentMessage(object, original) {
  if (object && object.get('hidden') === true) return false;
  const authors = new Map();
  for (const message of [object, original]) {
    const author = message && message.get('author');
    if (!(author instanceof Parse.Object) || author.className !== '_User') continue;
    if (!authors.has(author.id)) authors.set(author.id, publicProfile(author.id));
    const profile = await authors.get(author.id);
    if (profile) message.set('author', profile);
  }
  return true;
}

/** The user's public profile (username only), or null if the user is gone. */
async function publicProfile(userId) {
  try {
    return await new Parse.Query(Parse.User).select('username').get(userId, { useMasterKey: true });
  } catch (error) {
    if (error.code === Parse.Error.OBJECT_NOT_FOUND) return null;
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// parse-server's LiveQuery server: the rules as triggers.

Parse.Cloud.beforeConnect(async (request) => {
  await refuseBanned(request.installationId, request.user && request.user.id);
});

Parse.Cloud.beforeSubscribe('Message', (request) => {
  request.query.equalTo('tenant', tenantRestriction(request.user));
});

Parse.Cloud.afterLiveQueryEvent('Message', async (request) => {
  request.sendEvent = await presentMessage(request.object, request.original);
});

// ---------------------------------------------------------------------------------------------
// livequery: the same rules as Cloud Functions. Only the master key may call them (livequery
// sends it); a client calling them is refused by parse-server.

const livequeryOnly = { requireMaster: true };

/**
 * A Parse object of a hook request (`user`, `object`, `original`: Parse JSON, or null) as a
 * Parse.Object. parse-server has already decoded the pointers and dates inside `request.params`
 * (into Parse.Object pointers and Dates) but not the objects themselves: encode it back to Parse
 * JSON, then decode the whole.
 */
function objectOf(json) {
  return json ? Parse.Object.fromJSON(Parse._encode(json)) : undefined;
}

/** Parse JSON of an object with its included objects in full (not as pointers). */
function withIncludes(object) {
  const json = { ...object.toJSON(), __type: 'Object', className: object.className };
  for (const [key, value] of Object.entries(object.attributes)) {
    if (value instanceof Parse.Object && value.isDataAvailable()) {
      json[key] = { ...value.toJSON(), __type: 'Object', className: value.className };
    }
  }
  return json;
}

Parse.Cloud.define('lqBeforeConnect', async (request) => {
  const user = objectOf(request.params.user);
  await refuseBanned(request.params.installationId, user && user.id);
  return null;
}, livequeryOnly);

Parse.Cloud.define('lqBeforeSubscribe', (request) => {
  const tenant = tenantRestriction(objectOf(request.params.user));
  const where = { ...(request.params.query && request.params.query.where), tenant };
  return { query: { where } };
}, livequeryOnly);

Parse.Cloud.define('lqAfterEvent', async (request) => {
  const object = objectOf(request.params.object);
  const original = objectOf(request.params.original);
  if (!(await presentMessage(object, original))) return { sendEvent: false };
  const answer = {};
  if (object) answer.object = withIncludes(object);
  if (original) answer.original = withIncludes(original);
  return answer;
}, livequeryOnly);
