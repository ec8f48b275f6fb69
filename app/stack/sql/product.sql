-- The Product service's schema (shared/CONTRACT.md). Idempotent.
CREATE TABLE IF NOT EXISTS categories (
  id        BIGINT PRIMARY KEY,
  parent_id BIGINT NULL,
  code      VARCHAR(64)  NOT NULL,
  name      VARCHAR(255) NOT NULL,
  CONSTRAINT fk_categories_parent FOREIGN KEY (parent_id) REFERENCES categories(id)
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS warranty_types (
  id     BIGINT PRIMARY KEY,
  name   VARCHAR(255) NOT NULL,
  months INT NOT NULL
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS products (
  id               BIGINT PRIMARY KEY,
  sku              VARCHAR(64)  NOT NULL UNIQUE,
  name             VARCHAR(255) NOT NULL,
  category_id      BIGINT NOT NULL,
  warranty_type_id BIGINT NULL,
  unit             VARCHAR(16) NOT NULL,
  price            DECIMAL(12,2) NOT NULL,
  status           VARCHAR(16) NOT NULL,
  CONSTRAINT fk_products_category FOREIGN KEY (category_id) REFERENCES categories(id),
  CONSTRAINT fk_products_warranty FOREIGN KEY (warranty_type_id) REFERENCES warranty_types(id)
) ENGINE=InnoDB;
CREATE TABLE IF NOT EXISTS batches (
  id              BIGINT PRIMARY KEY,
  product_id      BIGINT NOT NULL,
  batch_no        VARCHAR(64) NOT NULL,
  manufactured_on DATE NULL,
  expires_on      DATE NULL,
  CONSTRAINT fk_batches_product FOREIGN KEY (product_id) REFERENCES products(id)
) ENGINE=InnoDB;
