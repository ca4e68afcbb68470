-- The example app's schema.
create table users (id bigint generated always as identity primary key, email text not null unique);
insert into users (email) values ('alice@example.com'), ('bob@example.com');
