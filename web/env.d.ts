// esbuild bundles the stylesheet that app.tsx imports into app.css.
declare module '*.css';
