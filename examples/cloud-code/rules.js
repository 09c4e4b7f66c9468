// The three LiveQuery rules of the example app, each written once; main.js exposes them as
// parse-server triggers and as the Cloud Functions livequery's hooks call. Uses the `Parse`
// global of Cloud Code.

/** Class holding bans: `installationId` (string) or `userId` (a `_User` objectId), `reason`. */
const BAN_CLASS = 'LiveQueryBan';

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

module.exports = { refuseBanned, tenantRestriction, presentMessage };
