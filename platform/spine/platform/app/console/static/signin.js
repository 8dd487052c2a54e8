// Sign in: check the key against the API, keep it in this tab's sessionStorage, go on.
"use strict";

// Where to go after signing in: a console page of this site (its query and fragment kept, so a
// deep link such as /ui/graph?node=Person:42 survives), never an address somebody put in the
// link: not another host ("//host", "https://host"), not a backslash (browsers read "/\host"
// as "//host"), not a scheme ("javascript:"), not a way out of /ui/ ("/ui/../v1").
function destination(next) {
  const fallback = "/ui/graph";
  if (typeof next !== "string" || !next.startsWith("/ui/") || /[\\\u0000-\u0020\u007f]/.test(next)) {
    return fallback;
  }
  let url;
  try {
    url = new URL(next, location.origin);
  } catch (_) {
    return fallback;
  }
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui/")) return fallback;
  return url.pathname + url.search + url.hash;
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("signin-form");
  const input = document.getElementById("key");
  const error = document.getElementById("signin-error");
  input.focus();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const token = input.value.trim();
    if (!token) {
      error.textContent = "Enter an API key.";
      input.setAttribute("aria-invalid", "true");
      return;
    }
    try {
      const who = await Spine.api("/ui/api/session", { token });
      sessionStorage.setItem(Spine.KEY, token);
      sessionStorage.setItem("spine.session", JSON.stringify(who));
      input.value = "";
      location.assign(destination(new URLSearchParams(location.search).get("next")));
    } catch (failure) {
      input.setAttribute("aria-invalid", "true");
      error.textContent =
        failure.status === 401 ? "This key is not valid (unknown, revoked or expired)." : String(failure.message);
    }
  });
});
