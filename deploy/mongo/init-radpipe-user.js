// Run once by the mongo image on first start (/docker-entrypoint-initdb.d), as the root
// account: creates Radpipe's own user with readWrite on the radpipe database only. The
// password comes from MONGO_RADPIPE_PASSWORD (.env); Radpipe connects with
// mongodb://radpipe:<password>@mongo:27017/radpipe?authSource=radpipe.
const password = process.env.MONGO_RADPIPE_PASSWORD;
if (!password || password.includes("change-me")) {
  throw new Error("set MONGO_RADPIPE_PASSWORD in .env (openssl rand -hex 32)");
}
db.getSiblingDB("radpipe").createUser({
  user: "radpipe",
  pwd: password,
  roles: [{ role: "readWrite", db: "radpipe" }],
});
