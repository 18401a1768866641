-- Staff sign-in failures that got past the password. Never edit once released: add a new migration.

-- 1 when the failed sign-in had the right password (so the second factor failed, or the account was
-- locked): only someone who holds the password can add such a row, and failures of that kind are also
-- counted for the whole account, from every address, so many addresses (an IPv6 /48 has 65,536 /64s)
-- do not buy as many guesses at the second factor.
ALTER TABLE staff_signin_failures ADD COLUMN password_ok BIGINT NOT NULL DEFAULT 0;
CREATE INDEX staff_signin_failures_second ON staff_signin_failures(user_id, password_ok, at);
