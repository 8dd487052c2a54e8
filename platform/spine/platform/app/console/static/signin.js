// Sign in: check the key against the API, keep it in this tab's sessionStorage, go on.
"use strict";

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
      const next = new URLSearchParams(location.search).get("next") || "";
      // Only a console path: never an address somebody put in the link.
      location.assign(/^\/ui\/[A-Za-z0-9/_-]*$/.test(next) ? next : "/ui/graph");
    } catch (failure) {
      input.setAttribute("aria-invalid", "true");
      error.textContent =
        failure.status === 401 ? "This key is not valid (unknown, revoked or expired)." : String(failure.message);
    }
  });
});
