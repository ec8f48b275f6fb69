-- The second example: an e-commerce catalogue, nothing like the demo. String primary keys
-- (brands.code, variants.sku), a hierarchy under other names (item_groups.parent_gid) with
-- another separator, a three-hop chain (variants -> items -> brands -> countries), a child
-- table as a grain (variants), an optional reference (items.supplier_id), and MariaDB types
-- the demo lacks. No foreign key is declared: references may dangle for a while and
-- resolve later, as a team's schema without constraints allows. Idempotent.
CREATE TABLE IF NOT EXISTS countries (
  id    INT PRIMARY KEY,
  name  VARCHAR(64) NOT NULL,
  iso   CHAR(2) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS brands (
  code       VARCHAR(32) PRIMARY KEY,
  name       VARCHAR(128) NOT NULL,
  country_id INT NOT NULL,
  founded    DATE NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS suppliers (
  id      INT PRIMARY KEY,
  name    VARCHAR(128) NOT NULL,
  rating  DOUBLE NULL,
  active  TINYINT(1) NOT NULL DEFAULT 1
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS item_groups (
  gid        INT PRIMARY KEY,
  parent_gid INT NULL,
  label      VARCHAR(128) NOT NULL,
  slug       VARCHAR(64) NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS items (
  id          BIGINT PRIMARY KEY,
  title       VARCHAR(255) NOT NULL,
  group_gid   INT NOT NULL,
  brand_code  VARCHAR(32) NOT NULL,
  supplier_id INT NULL,
  kind        ENUM('physical', 'digital', 'service') NOT NULL,
  created_at  DATETIME(3) NOT NULL,
  updated_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
CREATE TABLE IF NOT EXISTS variants (
  sku       VARCHAR(64) PRIMARY KEY,
  item_id   BIGINT NOT NULL,
  colour    VARCHAR(32) NULL,
  price     DECIMAL(10,2) NOT NULL,
  weight_kg DOUBLE NULL,
  in_stock  TINYINT(1) NOT NULL,
  released  DATE NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
