// Cloud Code of the hooks benchmark (tests/bench/hooks.mjs): the example app as it ships
// (examples/cloud-code/main.js: its beforeConnect ban list, and the Cloud Functions livequery
// calls), plus the example's include-author rule as parse-server's trigger on the benchmark's
// class, for parse-server's own LiveQuery server.
require('../../examples/cloud-code/main.js');
const { presentMessage } = require('../../examples/cloud-code/rules.js');

Parse.Cloud.afterLiveQueryEvent('LQBenchHook', async (request) => {
  request.sendEvent = await presentMessage(request.object, request.original);
});
